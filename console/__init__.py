"""The operator console: a web page over the deployables' public contracts."""
