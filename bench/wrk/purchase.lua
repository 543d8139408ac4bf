-- A full purchase: POST /api/orders, then POST /api/payments for that order with an
-- Idempotency-Key, as a customer would. wrk -s bench/wrk/purchase.lua GATEWAY_URL
-- BENCH_TOKEN: an access token; BENCH_PRODUCT: a product id; BENCH_PRICE: its price
-- ("10.00"), the amount paid for one unit.
--
-- Each wrk thread keeps the orders it placed and not yet paid: the next request of any
-- of its connections pays the oldest of them, or places a new order when there is none.
-- Responses are told apart by their body (only a payment has "paymentMethod").
-- done() prints "bench: placed=N paid=N failed=N" (failed: any other answer).
local token = os.getenv("BENCH_TOKEN")
local product = os.getenv("BENCH_PRODUCT")
local price = os.getenv("BENCH_PRICE")
local headers = {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}
local order_body = string.format(
  '{"items":[{"productId":"%s","quantity":1}],'
    .. '"shippingAddress":{"street":"1 Bench Street","city":"Benchville","zipCode":"12345"}}',
  product
)
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  unpaid = {}
  placed, paid, failed = 0, 0, 0
end

function request()
  local order_id = table.remove(unpaid, 1)
  if order_id == nil then
    return wrk.format("POST", "/api/orders", headers, order_body)
  end
  local pay_headers = {
    ["Authorization"] = headers["Authorization"],
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = "bench-" .. order_id,
  }
  local body = string.format(
    '{"orderId":"%s","amount":%s,"paymentMethod":"credit_card",'
      .. '"cardDetails":{"number":"4111111111111111","expiry":"12/35","cvv":"123"}}',
    order_id, price
  )
  return wrk.format("POST", "/api/payments", pay_headers, body)
end

function response(status, resp_headers, body)
  if status == 201 and body:find('"paymentMethod"', 1, true) then
    paid = paid + 1
  elseif status == 201 then
    local order_id = body:match('"id"%s*:%s*"([^"]+)"')
    if order_id then
      placed = placed + 1
      table.insert(unpaid, order_id)
    else
      failed = failed + 1
    end
  else
    failed = failed + 1
  end
end

function done(summary, latency, requests)
  local total_placed, total_paid, total_failed = 0, 0, 0
  for _, thread in ipairs(threads) do
    total_placed = total_placed + thread:get("placed")
    total_paid = total_paid + thread:get("paid")
    total_failed = total_failed + thread:get("failed")
  end
  print(string.format("bench: placed=%d paid=%d failed=%d", total_placed, total_paid,
    total_failed))
end
