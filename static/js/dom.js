// Small DOM helpers. User text only ever enters the page through textContent, never as HTML.

export function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

export function button(label, onClick, className) {
  const node = element("button", label, className);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

export function show(node, message) {
  node.textContent = message || "";
  node.hidden = !message;
  if (message) node.scrollIntoView({ block: "nearest" });
}

export function emptyRow(text, columns) {
  const row = element("tr", null, "empty");
  row.appendChild(element("td", text));
  row.firstChild.colSpan = columns;
  return row;
}

export function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

export function ms(value) {
  if (value === null || value === undefined) return "—";
  return `${Number(value).toFixed(value < 10 ? 2 : value < 100 ? 1 : 0)} ms`;
}
