// Money as integer cents: the API sends numbers with at most two decimals.

/** 29.99 -> 2999 (exact: the rounding removes the binary fraction's error). */
export function toCents(amount) {
  return Math.round(Number(amount) * 100);
}

/** 2999 -> 29.99 as the API expects it (the nearest double prints as two decimals). */
export function toAmount(cents) {
  return cents / 100;
}

/** 2999 -> "$29.99", built from the integer so no float ever rounds. */
export function formatCents(cents) {
  const sign = cents < 0 ? '-' : '';
  const absolute = Math.abs(cents);
  const units = Math.floor(absolute / 100).toLocaleString('en-US');
  return `${sign}$${units}.${String(absolute % 100).padStart(2, '0')}`;
}

/** "12.5" typed in a form -> 1250, or null when it is not a price. */
export function parsePrice(text) {
  const match = /^\s*(\d+)(?:\.(\d{1,2}))?\s*$/.exec(String(text));
  if (!match) return null;
  return Number(match[1]) * 100 + Number((match[2] || '0').padEnd(2, '0'));
}
