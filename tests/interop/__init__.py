"""Interop tests: Microsoft's Node clients (hyco-ws, hyco-https) against our relay."""
