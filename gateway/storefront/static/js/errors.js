// Every error shape of the API, said in words a customer understands.

const CONFLICTS = {
  EMAIL_TAKEN: 'An account with this email already exists. Log in instead.',
  INSUFFICIENT_STOCK: 'There is not enough stock left for this order.',
  PRICE_MISMATCH: 'A price changed since you added the product. Check the new total.',
  ORDER_NOT_MODIFIABLE: 'This order can no longer be changed in its current state.',
  ORDER_NOT_PAYABLE: 'This order cannot be paid any more: it is no longer waiting for payment.',
  ORDER_ALREADY_PAID: 'This order is already paid.',
  AMOUNT_MISMATCH: 'The amount no longer matches the order total. Reload the order.',
  IDEMPOTENCY_KEY_REUSED: 'This attempt was already sent with different details. Try again.',
};

/** One sentence for `error` (an ApiError or anything thrown). */
export function humanMessage(error) {
  const status = error?.status;
  const code = error?.code;
  if (status === 0) return 'The shop cannot be reached. Check your connection and try again.';
  if (code === 'INVALID_CREDENTIALS') return 'Wrong email or password.';
  if (status === 401) return 'Please log in to continue.';
  if (status === 403) return 'You are not allowed to do that with this account.';
  if (status === 404) return 'We could not find that. It may have been removed.';
  if (status === 402) return 'Your card was declined. Try another card.';
  if (code === 'CARD_EXPIRED') return 'This card has expired.';
  if (code === 'INVALID_CARD') return 'This card number is not valid.';
  if (status === 409) {
    const known = CONFLICTS[code];
    return known && code === 'INSUFFICIENT_STOCK' ? `${known} (${error.message})` : known || error.message;
  }
  if (status === 413) return 'That is too much data to send at once.';
  if (status === 422) return 'Some fields need your attention.';
  if (status === 429) return `Too many attempts. Try again in ${error.retryAfter ?? 60} s.`;
  if (status === 503) {
    const wait = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : '';
    return `This part of the shop is unavailable right now.${wait}`;
  }
  if (status === 504) return 'The shop took too long to answer. Try again in a moment.';
  if (status >= 500) {
    const reference = error.requestId ? ` (reference ${error.requestId})` : '';
    return `Something went wrong on our side${reference}. Try again.`;
  }
  return error?.message || 'Something went wrong.';
}

/** Field path -> message, for the errors that belong to one field of a form. */
export function fieldErrors(error, cardPrefix = 'cardDetails.') {
  const byField = {};
  for (const [path, messages] of Object.entries(error?.details || {})) {
    if (Array.isArray(messages)) byField[path] = messages.join(' ');
  }
  if (error?.code === 'CARD_EXPIRED') byField[`${cardPrefix}expiry`] ??= humanMessage(error);
  if (error?.code === 'INVALID_CARD') byField[`${cardPrefix}number`] ??= humanMessage(error);
  if (error?.status === 402) byField[`${cardPrefix}number`] = humanMessage(error);
  return byField;
}
