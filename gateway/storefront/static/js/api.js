// The public API as the pages use it: JSON in and out, the token added and refreshed.
import { send } from './http.js';
import { session } from './session.js';

export { ApiError } from './http.js';

/**
 * api('GET', '/api/orders', {auth: true}) -> the parsed body.
 * With `auth`, a 401 gets one quiet refresh and retry; a second 401 ends the session.
 */
export async function api(method, path, { body, auth = false, idempotencyKey, signal } = {}) {
  const headers = idempotencyKey ? { 'Idempotency-Key': idempotencyKey } : {};
  if (!auth) return send(method, path, { body, headers, signal });
  const token = await session.accessToken();
  try {
    return await send(method, path, { body, headers, signal, token });
  } catch (error) {
    if (error.status !== 401) throw error;
    const fresh = await session.afterRejection(token);
    try {
      return await send(method, path, { body, headers, signal, token: fresh });
    } catch (again) {
      if (again.status === 401) session.expire();
      throw again;
    }
  }
}

/** A random idempotency key (crypto.getRandomValues works on plain http too). */
export function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}
