// The cart: in localStorage (it survives a reload and is shared by this site's tabs).
// It holds what the customer saw; prices are checked against the server before an order.

const CART_KEY = 'shop.cart.v1';
export const CART_CHANGED = 'shop:cart-changed';

function read() {
  try {
    const lines = JSON.parse(localStorage.getItem(CART_KEY) || '[]');
    return Array.isArray(lines) ? lines.filter(isLine) : [];
  } catch {
    return [];
  }
}

function isLine(line) {
  return (
    line &&
    typeof line.productId === 'string' &&
    Number.isInteger(line.quantity) &&
    line.quantity > 0 &&
    Number.isInteger(line.priceCents)
  );
}

function write(lines) {
  localStorage.setItem(CART_KEY, JSON.stringify(lines));
  window.dispatchEvent(new CustomEvent(CART_CHANGED));
}

export const cart = {
  lines() {
    return read();
  },
  count() {
    return read().reduce((sum, line) => sum + line.quantity, 0);
  },
  totalCents() {
    return read().reduce((sum, line) => sum + line.priceCents * line.quantity, 0);
  },
  /** Add `quantity` of a product as the customer saw it ({id, name, priceCents}). */
  add(product, quantity = 1) {
    const lines = read();
    const line = lines.find((l) => l.productId === product.id);
    if (line) line.quantity += quantity;
    else lines.push({ productId: product.id, name: product.name, priceCents: product.priceCents, quantity });
    write(lines);
  },
  setQuantity(productId, quantity) {
    const lines = read()
      .map((l) => (l.productId === productId ? { ...l, quantity } : l))
      .filter((l) => l.quantity > 0);
    write(lines);
  },
  remove(productId) {
    write(read().filter((l) => l.productId !== productId));
  },
  /** Take the server's name and price; the lines whose price changed, with the old one. */
  reprice(products) {
    const changed = [];
    const lines = read().map((line) => {
      const product = products.get(line.productId);
      if (!product) return line;
      if (product.priceCents !== line.priceCents) {
        changed.push({ name: product.name, from: line.priceCents, to: product.priceCents });
      }
      return { ...line, name: product.name, priceCents: product.priceCents };
    });
    write(lines);
    return changed;
  },
  clear() {
    write([]);
  },
};

window.addEventListener('storage', (event) => {
  if (event.key === CART_KEY) window.dispatchEvent(new CustomEvent(CART_CHANGED));
});
