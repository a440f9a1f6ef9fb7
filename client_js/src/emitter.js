// A minimal typed event emitter (no dependency on Node's events or the DOM's EventTarget).

/**
 * @template {Record<string, unknown>} Events
 */
export class Emitter {
  constructor() {
    /** @type {Map<keyof Events, Set<(payload: any) => void>>} */
    this._handlers = new Map();
  }

  /**
   * Call `handler` on every `event`; returns a function that removes it.
   * @template {keyof Events} K
   * @param {K} event
   * @param {(payload: Events[K]) => void} handler
   * @returns {() => void}
   */
  on(event, handler) {
    let set = this._handlers.get(event);
    if (!set) {
      set = new Set();
      this._handlers.set(event, set);
    }
    set.add(handler);
    return () => this.off(event, handler);
  }

  /**
   * @template {keyof Events} K
   * @param {K} event
   * @param {(payload: Events[K]) => void} handler
   * @returns {void}
   */
  off(event, handler) {
    this._handlers.get(event)?.delete(handler);
  }

  /**
   * Call the handlers of `event` in the order they were added. A handler that throws does not stop the others
   * or the caller: the error is reported asynchronously (as an uncaught error), like a DOM event listener's.
   * @template {keyof Events} K
   * @param {K} event
   * @param {Events[K]} payload
   * @returns {void}
   */
  emit(event, payload) {
    const set = this._handlers.get(event);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(payload);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}
