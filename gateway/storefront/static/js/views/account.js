// Log in, register, and the account page (profile and password).
import { api } from '../api.js';
import { h, replace, whileBusy } from '../dom.js';
import { clearErrors, field, formMessage, showError, values } from '../forms.js';
import { session } from '../session.js';

/** Where to go after logging in: the page that asked, never back to a login page. */
function nextHash(ctx) {
  const next = ctx.query.get('next') || '/';
  return next.startsWith('/') && !next.startsWith('/login') && !next.startsWith('/register') ? `#${next}` : '#/';
}

function linkKeepingNext(ctx, path, text) {
  const next = ctx.query.get('next');
  return h('a', { href: next ? `#${path}?${new URLSearchParams({ next })}` : `#${path}` }, text);
}

export async function loginView(ctx) {
  ctx.title('Log in');
  if (session.signedIn) return ctx.go(nextHash(ctx));
  const email = field({ name: 'email', label: 'Email', type: 'email', autocomplete: 'username', required: true });
  const password = field({ name: 'password', label: 'Password', type: 'password', autocomplete: 'current-password', required: true });
  const submit = h('button', { class: 'button', type: 'submit' }, 'Log in');
  const form = h('form', { class: 'stack', novalidate: true, 'aria-label': 'Log in' }, email.element, password.element, submit);
  if (ctx.query.get('reason') === 'expired') {
    formMessage(form).append(h('p', { class: 'notice notice-warn' }, 'Your session has ended. Log in again to continue where you were.'));
  }
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (submit.disabled) return;
    clearErrors(form);
    const address = values(form).email;
    try {
      await whileBusy(submit, 'Logging in…', () => session.login(address, new FormData(form).get('password')));
      ctx.go(nextHash(ctx));
    } catch (error) {
      showError(form, error);
    }
  });
  replace(
    ctx.main,
    h('h1', {}, 'Log in'),
    form,
    h('p', {}, 'New here? ', linkKeepingNext(ctx, '/register', 'Create an account'), '.'),
  );
  email.input.focus();
}

export async function registerView(ctx) {
  ctx.title('Create an account');
  if (session.signedIn) return ctx.go(nextHash(ctx));
  const name = field({ name: 'name', label: 'Name', autocomplete: 'name', required: true });
  const email = field({ name: 'email', label: 'Email', type: 'email', autocomplete: 'email', required: true });
  const password = field({
    name: 'password',
    label: 'Password',
    type: 'password',
    autocomplete: 'new-password',
    hint: 'At least 8 characters.',
    required: true,
    minlength: '8',
  });
  const submit = h('button', { class: 'button', type: 'submit' }, 'Create account');
  const form = h('form', { class: 'stack', novalidate: true, 'aria-label': 'Create an account' }, name.element, email.element, password.element, submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (submit.disabled) return;
    clearErrors(form);
    const entered = values(form);
    const secret = new FormData(form).get('password');
    try {
      await whileBusy(submit, 'Creating your account…', async () => {
        await api('POST', '/api/users/register', { body: { name: entered.name, email: entered.email, password: secret } });
        await session.login(entered.email, secret);
      });
      ctx.go(nextHash(ctx));
    } catch (error) {
      showError(form, error);
    }
  });
  replace(
    ctx.main,
    h('h1', {}, 'Create an account'),
    form,
    h('p', {}, 'Already have one? ', linkKeepingNext(ctx, '/login', 'Log in'), '.'),
  );
  name.input.focus();
}

function profileForm(profile) {
  const name = field({ name: 'name', label: 'Name', autocomplete: 'name', value: profile.name, required: true });
  const submit = h('button', { class: 'button', type: 'submit' }, 'Save name');
  const form = h('form', { class: 'stack', novalidate: true, 'aria-labelledby': 'profile-heading' }, h('h2', { id: 'profile-heading' }, 'Profile'), name.element, submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (submit.disabled) return;
    clearErrors(form);
    try {
      const updated = await whileBusy(submit, 'Saving…', () =>
        api('PATCH', '/api/users/me', { body: { name: values(form).name }, auth: true }),
      );
      session.updateProfile(updated);
      clearErrors(form);
      formMessage(form).append(h('p', { class: 'notice notice-ok' }, 'Your name is saved.'));
    } catch (error) {
      if (error.status !== 401) showError(form, error);
    }
  });
  return form;
}

function passwordForm() {
  const current = field({ name: 'currentPassword', label: 'Current password', type: 'password', autocomplete: 'current-password', required: true });
  const next = field({ name: 'password', label: 'New password', type: 'password', autocomplete: 'new-password', hint: 'At least 8 characters.', required: true });
  const submit = h('button', { class: 'button', type: 'submit' }, 'Change password');
  const form = h('form', { class: 'stack', novalidate: true, 'aria-labelledby': 'password-heading' }, h('h2', { id: 'password-heading' }, 'Password'), current.element, next.element, submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (submit.disabled) return;
    clearErrors(form);
    const data = new FormData(form);
    try {
      await whileBusy(submit, 'Changing…', () =>
        api('PATCH', '/api/users/me', {
          body: { currentPassword: data.get('currentPassword'), password: data.get('password') },
          auth: true,
        }),
      );
      form.reset();
      clearErrors(form);
      formMessage(form).append(h('p', { class: 'notice notice-ok' }, 'Your password is changed.'));
    } catch (error) {
      if (error.status !== 401) showError(form, error);
    }
  });
  return form;
}

export async function accountView(ctx) {
  ctx.title('Your account');
  replace(ctx.main, h('h1', {}, 'Your account'), h('p', { class: 'loading', role: 'status' }, 'Loading your profile…'));
  const profile = await api('GET', '/api/users/me', { auth: true, signal: ctx.signal });
  session.updateProfile(profile);
  replace(
    ctx.main,
    h('h1', {}, 'Your account'),
    h('p', {}, `Signed in as ${profile.email}`, profile.role === 'admin' ? ' (administrator)' : ''),
    h('div', { class: 'split' }, profileForm(profile), passwordForm()),
  );
}
