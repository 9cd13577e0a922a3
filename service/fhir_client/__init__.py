"""Queries to an EHR's FHIR server (the CDS Hooks prefetch fallback): which servers may be queried, and a
bounded HTTP client for reads and paged searches. An edge module: the clinical core never imports it."""
