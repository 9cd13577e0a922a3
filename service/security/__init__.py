"""Who may call the service: CDS Hooks JWTs from trusted issuers, API keys for /evaluate, modes, CORS policy.

HTTP-free: service.http_api.auth applies it to requests.
"""
