// Typed events on the platform's EventTarget (browsers and Node alike): `on(event, handler)` is the typed API
// (the handler gets the payload), and because every emitter IS an EventTarget, `addEventListener(type, e =>
// e.detail)`, `{once: true}`, `{signal}` and DOM tooling work too.

/** The event every emitter dispatches: its payload is `detail`, as in a DOM CustomEvent. */
export class PodstreamEvent extends Event {
  /**
   * @param {string} type
   * @param {unknown} detail
   */
  constructor(type, detail) {
    super(type);
    /** The event's payload (what `on` handlers receive). */
    this.detail = detail;
  }
}

/**
 * @template {Record<string, unknown>} Events
 */
export class Emitter extends EventTarget {
  constructor() {
    super();
    /** The listener registered for each (event, handler), so `off` can remove it and `on` adds it once. */
    /** @type {Map<string, Map<(payload: any) => void, (event: Event) => void>>} */
    this._listeners = new Map();
  }

  /**
   * Call `handler` with the payload of every `event`; returns a function that removes it. Adding the same
   * handler twice for one event adds it once, as `addEventListener` does.
   * @template {keyof Events & string} K
   * @param {K} event
   * @param {(payload: Events[K]) => void} handler
   * @returns {() => void}
   */
  on(event, handler) {
    let byHandler = this._listeners.get(event);
    if (!byHandler) {
      byHandler = new Map();
      this._listeners.set(event, byHandler);
    }
    if (!byHandler.has(handler)) {
      const listener = (/** @type {Event} */ e) =>
        handler(/** @type {Events[K]} */ (/** @type {PodstreamEvent} */ (e).detail));
      byHandler.set(handler, listener);
      this.addEventListener(event, listener);
    }
    return () => this.off(event, handler);
  }

  /**
   * @template {keyof Events & string} K
   * @param {K} event
   * @param {(payload: Events[K]) => void} handler
   * @returns {void}
   */
  off(event, handler) {
    const listener = this._listeners.get(event)?.get(handler);
    if (!listener) return;
    this._listeners.get(event)?.delete(handler);
    this.removeEventListener(event, listener);
  }

  /**
   * Dispatch `event` with `payload` to its listeners, synchronously, in the order they were added. A listener
   * that throws does not stop the others or the caller: the platform reports the error as uncaught.
   * @template {keyof Events & string} K
   * @param {K} event
   * @param {Events[K]} payload
   * @returns {void}
   */
  emit(event, payload) {
    this.dispatchEvent(new PodstreamEvent(event, payload));
  }
}
