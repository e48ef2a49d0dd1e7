// The storefront: list products, place an order through the public API, show its status.
// Data from the API is only ever put into the page as text (textContent), never as HTML.
(() => {
  "use strict";
  const apiKey = document.querySelector('meta[name="api-key"]').content;
  const $ = (selector) => document.querySelector(selector);
  const TERMINAL = new Set(["confirmed", "failed", "cancelled"]);

  // A random UUID v4; crypto.randomUUID needs a secure context, which a PoP over plain HTTP is not.
  function uuid4() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  class ApiError extends Error {
    constructor(status, detail) {
      super(`${status}: ${detail}`);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const headers = { "X-API-Key": apiKey, Accept: "application/json", ...(options.headers || {}) };
    const response = await fetch(path, { ...options, headers });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      throw new ApiError(response.status, (body && body.detail) || response.statusText);
    }
    return body;
  }

  function money(cents, currency) {
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency }).format(cents / 100);
    } catch (_) {
      return `${(cents / 100).toFixed(2)} ${currency}`;
    }
  }

  function el(tag, attrs = {}, text = null) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text !== null) node.textContent = text;
    return node;
  }

  function renderProducts(items) {
    const list = $("#products");
    list.replaceChildren();
    for (const product of items) {
      const li = el("li", { class: "product", "data-product-id": product.id });
      li.append(
        el("img", { src: product.image_url, alt: product.name, width: "200", height: "200" }),
        el("h3", {}, product.name),
        el("p", { class: "description" }, product.description),
        el("p", { class: "price" }, money(product.price_cents, product.currency)),
      );
      const label = el("label", {}, "Quantity");
      const input = el("input", { type: "number", min: "0", max: "100", value: "0" });
      input.className = "quantity";
      input.dataset.productId = product.id;
      label.append(input);
      li.append(label);
      list.append(li);
    }
    $("#products-status").textContent = items.length ? "" : "No products.";
    $("#place-order").disabled = items.length === 0;
  }

  function chosenItems() {
    const items = [];
    for (const input of document.querySelectorAll("input.quantity")) {
      const quantity = Number.parseInt(input.value, 10);
      if (quantity > 0) items.push({ product_id: input.dataset.productId, quantity });
    }
    return items;
  }

  function showOrder(order) {
    $("#order").hidden = false;
    $("#order").dataset.orderId = order.id;
    $("#order").dataset.status = order.status;
    $("#order-id").textContent = order.id;
    $("#order-status").textContent = order.status;
    $("#order-total").textContent = money(order.total_cents, order.currency);
    $("#order-reason").textContent = order.reason || "";
  }

  async function checkout(items, key) {
    const options = {
      method: "POST",
      headers: { "Content-Type": "application/json", "Idempotency-Key": key },
      body: JSON.stringify({ items }),
    };
    try {
      return await api("/api/checkout", options);
    } catch (error) {
      // Safe to retry once: the same Idempotency-Key cannot place a second order.
      const retryable = !(error instanceof ApiError) || [502, 503, 504].includes(error.status);
      if (!retryable) throw error;
      await new Promise((resolve) => setTimeout(resolve, 500));
      return await api("/api/checkout", options);
    }
  }

  async function follow(order) {
    for (let i = 0; i < 20 && !TERMINAL.has(order.status); i += 1) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      order = await api(`/api/orders/${encodeURIComponent(order.id)}`);
      showOrder(order);
    }
  }

  async function placeOrder() {
    const button = $("#place-order");
    const message = $("#checkout-message");
    const items = chosenItems();
    if (items.length === 0) {
      message.textContent = "Choose a quantity for at least one product.";
      return;
    }
    button.disabled = true;
    message.textContent = "";
    try {
      const order = await checkout(items, uuid4());
      showOrder(order);
      await follow(order);
    } catch (error) {
      message.textContent = `The order failed: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  }

  async function start() {
    $("#place-order").addEventListener("click", placeOrder);
    try {
      const list = await api("/api/products");
      renderProducts(list.items);
    } catch (error) {
      $("#products-status").textContent = `Could not load the products: ${error.message}`;
    }
  }

  start();
})();
