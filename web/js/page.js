// What the account and partner pages share: element by id, the #message box, form values.

export const $ = (id) => document.getElementById(id);

export function say(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.dataset.kind = kind;
  box.hidden = !text;
}

export function formData(form) {
  return Object.fromEntries(new FormData(form).entries());
}
