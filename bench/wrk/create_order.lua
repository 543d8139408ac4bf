-- POST /api/orders, one unit of BENCH_PRODUCT per order, with the customer's token.
-- BENCH_TOKEN: an access token; BENCH_PRODUCT: a product id with stock to spare.
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format(
  '{"items":[{"productId":"%s","quantity":1}],'
    .. '"shippingAddress":{"street":"1 Bench Street","city":"Benchville","zipCode":"12345"}}',
  os.getenv("BENCH_PRODUCT")
)
