"""One chat turn, between the HTTP handlers and the relay: the stages that prepare what goes upstream (the
conversation's memory, the waiting message, retrieval, the server's tools) and the answer itself, composed in
service.py. Plain code with no Tornado in it, testable without HTTP."""
