"""streamrec's gRPC server: FAISS index, filters, ranking, health and reflection."""
