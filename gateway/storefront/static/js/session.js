// The signed-in session: the access token in memory only, the refresh token in this
// tab's sessionStorage (gone when the tab closes), a quiet refresh before expiry.
import { ApiError, send } from './http.js';

const REFRESH_TOKEN_KEY = 'shop.refreshToken';
/** Refresh this long before the access token expires (at most a fifth of its life). */
const REFRESH_LEAD_SECONDS = 60;

let access = null; // {token, expiresAt}
let profile = null;
let refreshing = null;
let timer = null;
/** While a reload restores the session, a dead one is dropped quietly (the page is public). */
let restoring = false;
const listeners = new Set();

function unauthorized() {
  return new ApiError({ status: 401, code: 'UNAUTHORIZED', message: 'Please log in.' });
}

function notify(reason) {
  for (const listener of listeners) listener(reason);
}

function schedule(expiresIn) {
  clearTimeout(timer);
  const lead = Math.min(REFRESH_LEAD_SECONDS, expiresIn / 5);
  timer = setTimeout(() => refresh().catch(() => {}), Math.max(1, expiresIn - lead) * 1000);
}

async function adopt(pair) {
  access = { token: pair.accessToken, expiresAt: Date.now() + pair.expiresIn * 1000 };
  sessionStorage.setItem(REFRESH_TOKEN_KEY, pair.refreshToken);
  schedule(pair.expiresIn);
  if (!profile) profile = await send('GET', '/api/users/me', { token: access.token });
  notify('signed-in');
}

function forget() {
  clearTimeout(timer);
  access = null;
  profile = null;
  sessionStorage.removeItem(REFRESH_TOKEN_KEY);
}

async function rotate() {
  const refreshToken = sessionStorage.getItem(REFRESH_TOKEN_KEY);
  if (!refreshToken) {
    forget();
    throw unauthorized();
  }
  let pair;
  try {
    pair = await send('POST', '/api/users/refresh', { body: { refreshToken } });
  } catch (error) {
    // Only a refusal ends the session; an outage leaves it for the next try.
    if (error.status === 401) session.expire();
    throw error;
  }
  await adopt(pair);
}

/** One refresh at a time: a rotated refresh token works once. */
function refresh() {
  if (!refreshing) refreshing = rotate().finally(() => (refreshing = null));
  return refreshing;
}

export const session = {
  get signedIn() {
    return access !== null;
  },
  get profile() {
    return profile;
  },
  get isAdmin() {
    return profile?.role === 'admin';
  },
  onChange(listener) {
    listeners.add(listener);
  },

  /** After a reload: a stored refresh token becomes a new session, quietly. */
  async restore() {
    if (!sessionStorage.getItem(REFRESH_TOKEN_KEY)) return;
    restoring = true;
    try {
      await refresh();
    } catch {
      // expired or unreachable: the visitor browses signed out, and can log in again
    } finally {
      restoring = false;
    }
  },

  async login(email, password) {
    const pair = await send('POST', '/api/users/login', { body: { email, password } });
    profile = null;
    await adopt(pair);
  },

  async logout() {
    const token = access?.token;
    forget();
    notify('signed-out');
    if (token) await send('POST', '/api/users/logout', { token }).catch(() => {});
  },

  /** A valid access token, refreshed first when it is about to expire. */
  async accessToken() {
    if (!access) {
      if (!sessionStorage.getItem(REFRESH_TOKEN_KEY)) throw unauthorized();
      await refresh();
    } else if (Date.now() > access.expiresAt - 5000) {
      await refresh();
    }
    return access.token;
  },

  /** The API refused `rejected`: a newer token if another call refreshed, else refresh. */
  async afterRejection(rejected) {
    if (access && access.token !== rejected) return access.token;
    await refresh();
    return access.token;
  },

  /** The server ended the session (revoked, expired): forget it and say so. */
  expire() {
    const was = access !== null || sessionStorage.getItem(REFRESH_TOKEN_KEY) !== null;
    forget();
    if (was && !restoring) notify('expired');
  },

  updateProfile(updated) {
    profile = updated;
    notify('profile');
  },
};
