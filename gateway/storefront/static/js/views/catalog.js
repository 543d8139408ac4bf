// The catalog (paged) and one product.
import { api } from '../api.js';
import { cart } from '../cart.js';
import { h, replace } from '../dom.js';
import { formatCents, toCents } from '../money.js';

const PAGE_SIZE = 12;

/** The API's product with its price in cents. */
export function productFromApi(item) {
  return { ...item, priceCents: toCents(item.price) };
}

function positive(text, fallback) {
  const number = Number.parseInt(text || '', 10);
  return Number.isInteger(number) && number > 0 ? number : fallback;
}

function stockText(stock) {
  if (stock <= 0) return h('p', { class: 'stock out' }, 'Out of stock');
  return h('p', { class: 'stock' }, `${stock} in stock`);
}

function tile(name) {
  return h('div', { class: 'tile', 'aria-hidden': 'true' }, (name || '?').trim().charAt(0).toUpperCase());
}

function addButton(product, quantityOf = () => 1) {
  const status = h('span', { class: 'muted', role: 'status' });
  const button = h(
    'button',
    {
      class: 'button',
      type: 'button',
      disabled: product.stock <= 0,
      'aria-label': `Add ${product.name} to cart`,
      onclick: () => {
        const quantity = quantityOf();
        if (!quantity) return;
        cart.add(product, quantity);
        status.textContent = `Added ${quantity} to your cart.`;
      },
    },
    'Add to cart',
  );
  return [button, status];
}

function productCard(product) {
  return h(
    'li',
    { class: 'card', 'data-product-id': product.id },
    tile(product.name),
    h('h2', {}, h('a', { href: `#/products/${encodeURIComponent(product.id)}` }, product.name)),
    h('p', { class: 'price' }, formatCents(product.priceCents)),
    stockText(product.stock),
    h('div', { class: 'actions' }, addButton(product)),
  );
}

function skeletonCards(count) {
  return Array.from({ length: count }, () =>
    h('li', { class: 'card skeleton', 'aria-hidden': 'true' }, h('div', { class: 'tile' }), '\u00a0'),
  );
}

export function pager(page, limit, total, hashFor) {
  const pages = Math.max(1, Math.ceil(total / limit));
  return h(
    'nav',
    { class: 'pager', 'aria-label': 'Pages' },
    page > 1 ? h('a', { class: 'button secondary', href: hashFor(page - 1), rel: 'prev' }, 'Previous page') : null,
    h('span', {}, `Page ${page} of ${pages}`),
    page < pages ? h('a', { class: 'button secondary', href: hashFor(page + 1), rel: 'next' }, 'Next page') : null,
  );
}

export async function catalogView(ctx) {
  ctx.title('Catalog');
  const page = positive(ctx.query.get('page'), 1);
  const list = h('ul', { class: 'grid', 'aria-busy': 'true', 'aria-label': 'Products' }, skeletonCards(6));
  replace(ctx.main, h('h1', {}, 'Catalog'), h('p', { class: 'loading', role: 'status' }, 'Loading products…'), list);
  const result = await api('GET', `/api/products?page=${page}&limit=${PAGE_SIZE}`, { signal: ctx.signal });
  const products = result.items.map(productFromApi);
  replace(
    ctx.main,
    h('h1', {}, 'Catalog'),
    h('p', { class: 'muted' }, `${result.total} product${result.total === 1 ? '' : 's'}`),
    products.length
      ? h('ul', { class: 'grid', 'aria-label': 'Products' }, products.map(productCard))
      : h('p', {}, 'Nothing on this page. ', h('a', { href: '#/' }, 'Back to the first page'), '.'),
    pager(page, PAGE_SIZE, result.total, (n) => `#/?page=${n}`),
  );
}

export async function productView(ctx) {
  const [productId] = ctx.params;
  ctx.title('Product');
  replace(ctx.main, h('p', { class: 'loading', role: 'status' }, 'Loading the product…'));
  const product = productFromApi(
    await api('GET', `/api/products/${encodeURIComponent(productId)}`, { signal: ctx.signal }),
  );
  ctx.title(product.name);
  const quantity = h('input', {
    id: 'quantity',
    type: 'number',
    min: '1',
    max: String(Math.max(1, product.stock)),
    value: '1',
    class: 'qty',
    inputmode: 'numeric',
  });
  const readQuantity = () => {
    const value = Number.parseInt(quantity.value, 10);
    return Number.isInteger(value) && value > 0 ? Math.min(value, product.stock) : 0;
  };
  replace(
    ctx.main,
    h('p', {}, h('a', { href: '#/' }, '← Catalog')),
    h(
      'article',
      { class: 'panel', 'data-product-id': product.id },
      tile(product.name),
      h('h1', {}, product.name),
      h('p', { class: 'price' }, formatCents(product.priceCents)),
      stockText(product.stock),
      h('div', { class: 'field' }, h('label', { for: 'quantity' }, 'Quantity'), quantity),
      h('div', { class: 'actions' }, addButton(product, readQuantity)),
    ),
  );
}
