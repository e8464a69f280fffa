"""Authentication (JWT -> Principal), authorization helpers and rate limiting."""
