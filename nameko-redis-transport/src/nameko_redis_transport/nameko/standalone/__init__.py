"""``nameko.standalone`` on Redis: standalone proxies and dispatchers normalize their config,
and proxies time out after ``RPC_TIMEOUT`` by default (one module per Nameko module)."""
