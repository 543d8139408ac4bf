// One request to the API; an ApiError for anything but success.

export class ApiError extends Error {
  constructor({ status, code, message, details = {}, retryAfter = null, requestId = null }) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
    this.retryAfter = retryAfter;
    this.requestId = requestId;
  }
}

export async function send(method, path, { body, token, headers = {}, signal } = {}) {
  const sent = { Accept: 'application/json', ...headers };
  if (body !== undefined) sent['Content-Type'] = 'application/json';
  if (token) sent.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'omit',
      cache: 'no-store',
      signal,
    });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError({ status: 0, code: 'NETWORK', message: 'The shop cannot be reached.' });
  }
  const text = response.status === 204 ? '' : await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (response.ok) return data;
  const retryAfter = Number.parseInt(response.headers.get('Retry-After') || '', 10);
  throw new ApiError({
    status: response.status,
    code: data?.error || 'HTTP_' + response.status,
    message: data?.message || response.statusText,
    details: data?.details,
    retryAfter: Number.isFinite(retryAfter) ? retryAfter : null,
    requestId: response.headers.get('X-Request-ID'),
  });
}
