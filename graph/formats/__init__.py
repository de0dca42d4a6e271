"""Workflow file formats: the API prompt, the editor's saved graph, PNG text chunks, JSON Schemas."""
