// Labelled fields whose errors sit next to them, and a form-level message.
import { h, replace } from './dom.js';
import { fieldErrors, humanMessage } from './errors.js';

let counter = 0;

/**
 * A labelled input: {element, input}; `name` is the API's field path (e.g. cardDetails.cvv),
 * `label` a string or nodes.
 */
export function field({ name, label, type = 'text', hint, value, ...attributes }) {
  const id = `f${++counter}-${name.replace(/[^A-Za-z0-9]/g, '-')}`;
  const error = h('p', { class: 'field-error', id: `${id}-error` });
  const hintElement = hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null;
  const input = h('input', {
    id,
    name,
    type,
    'data-field': name,
    'aria-describedby': [hintElement ? `${id}-hint` : '', `${id}-error`].join(' ').trim(),
    ...attributes,
  });
  if (value !== undefined && value !== null) input.value = String(value);
  return { element: h('div', { class: 'field' }, h('label', { for: id }, label), input, hintElement, error), input };
}

/** The form-level message area of `form` (created once, at the top). */
export function formMessage(form) {
  let area = form.querySelector(':scope > .form-error');
  if (!area) {
    area = h('div', { class: 'form-error', role: 'alert' });
    form.prepend(area);
  }
  return area;
}

export function clearErrors(form) {
  for (const input of form.querySelectorAll('[data-field]')) {
    input.removeAttribute('aria-invalid');
    const error = document.getElementById(`${input.id}-error`);
    if (error) error.textContent = '';
  }
  replace(formMessage(form));
}

/** Put `error` next to the fields it names and a sentence at the top; focus the first. */
export function showError(form, error, { fieldPrefix = '' } = {}) {
  clearErrors(form);
  const byField = fieldErrors(error);
  let first = null;
  const unplaced = [];
  for (const [path, message] of Object.entries(byField)) {
    const input = form.querySelector(`[data-field="${CSS.escape(fieldPrefix + path)}"]`)
      || form.querySelector(`[data-field="${CSS.escape(path)}"]`);
    if (!input) {
      unplaced.push(`${path}: ${message}`);
      continue;
    }
    input.setAttribute('aria-invalid', 'true');
    document.getElementById(`${input.id}-error`).textContent = message;
    first ??= input;
  }
  const sentence = humanMessage(error);
  replace(
    formMessage(form),
    h('p', { class: 'notice notice-error' }, [sentence, ...unplaced].join(' ')),
  );
  if (first) first.focus();
}

/** The form's values as an object of trimmed strings, by input name. */
export function values(form) {
  const result = {};
  for (const [name, value] of new FormData(form).entries()) result[name] = String(value).trim();
  return result;
}
