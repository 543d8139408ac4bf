// The card form of a pending order. Each attempt has one Idempotency-Key: a double
// click, a retry or a reload that sends the same attempt again is never charged twice.
import { api, newIdempotencyKey } from '../api.js';
import { h, whileBusy } from '../dom.js';
import { clearErrors, field, formMessage, showError, values } from '../forms.js';
import { formatCents, toAmount, toCents } from '../money.js';

const ATTEMPT_PREFIX = 'shop.paymentAttempt.';

/** A digest of the attempt, so the stored key never holds the card's number or CVV. */
async function fingerprint(body) {
  const text = JSON.stringify(body);
  if (crypto.subtle) {
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
    return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
  }
  // Plain http on a non-local host has no crypto.subtle: the card's public parts only.
  const card = body.cardDetails;
  return [body.orderId, body.amount, card.number.slice(-4), card.expiry, card.cvv.length].join('|');
}

/** The same attempt reuses its key (also after a reload); a changed one gets a new key. */
async function attemptKey(body) {
  const storageKey = ATTEMPT_PREFIX + body.orderId;
  const print = await fingerprint(body);
  try {
    const stored = JSON.parse(sessionStorage.getItem(storageKey) || 'null');
    if (stored?.fingerprint === print) return stored.key;
  } catch {
    // a damaged entry: a new attempt
  }
  const key = newIdempotencyKey();
  sessionStorage.setItem(storageKey, JSON.stringify({ fingerprint: print, key }));
  return key;
}

/** "4111 1111-1111 1111" -> "4111111111111111"; "12 / 30" -> "12/30". */
function normalise(card) {
  return {
    number: card.number.replace(/[\s-]/g, ''),
    expiry: card.expiry.replace(/\s/g, ''),
    cvv: card.cvv.trim(),
  };
}

export function paymentForm(order, { onPaid, onAttempt }) {
  const totalCents = toCents(order.total);
  const number = field({
    name: 'cardDetails.number',
    label: 'Card number',
    autocomplete: 'cc-number',
    inputmode: 'numeric',
    required: true,
  });
  const expiry = field({
    name: 'cardDetails.expiry',
    label: 'Expiry (MM/YY)',
    autocomplete: 'cc-exp',
    placeholder: 'MM/YY',
    required: true,
  });
  const cvv = field({ name: 'cardDetails.cvv', label: 'CVV', autocomplete: 'cc-csc', inputmode: 'numeric', required: true });
  const submit = h('button', { class: 'button', type: 'submit' }, `Pay ${formatCents(totalCents)}`);
  const form = h(
    'form',
    { class: 'stack panel', novalidate: true, 'aria-labelledby': 'pay-heading', id: 'payment-form' },
    h('h2', { id: 'pay-heading' }, 'Pay by card'),
    number.element,
    h('div', { class: 'row' }, expiry.element, cvv.element),
    submit,
  );
  let paying = false;
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (paying) return; // a second click while the first attempt is on its way
    paying = true;
    clearErrors(form);
    const card = normalise({
      number: values(form)['cardDetails.number'] || '',
      expiry: values(form)['cardDetails.expiry'] || '',
      cvv: values(form)['cardDetails.cvv'] || '',
    });
    const body = { orderId: order.id, amount: toAmount(totalCents), paymentMethod: 'credit_card', cardDetails: card };
    try {
      const key = await attemptKey(body);
      await whileBusy(submit, 'Paying…', () => api('POST', '/api/payments', { body, auth: true, idempotencyKey: key }));
      sessionStorage.removeItem(ATTEMPT_PREFIX + order.id);
      onPaid();
    } catch (error) {
      if (error.status === 401) return; // the session sends them to log in
      showError(form, error);
      if (error.status === 402) {
        formMessage(form).append(h('p', { class: 'muted' }, 'The order is still waiting for payment.'));
        onAttempt({ keepForm: true });
      }
      if (error.code === 'ORDER_ALREADY_PAID' || error.code === 'ORDER_NOT_PAYABLE') onPaid();
    } finally {
      paying = false;
    }
  });
  return form;
}
