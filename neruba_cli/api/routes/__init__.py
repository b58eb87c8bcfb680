"""One module per resource of the HTTP API; each declares its routes' scopes and errors."""
