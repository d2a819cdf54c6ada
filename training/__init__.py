"""The trainer: event log in, evaluated and versioned model artifact out."""
