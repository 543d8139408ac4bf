-- GET with the customer's token: wrk -s bench/wrk/bearer.lua URL
-- BENCH_TOKEN: an access token (bench/gateway.py logs in and sets it).
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
