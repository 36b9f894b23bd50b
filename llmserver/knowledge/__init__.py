"""The knowledge base and retrieval: documents and their storage, the index, and what the RAG endpoint injects."""
