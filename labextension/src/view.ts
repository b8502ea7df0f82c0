/**
 * `LedgerView`: a widget that shows one `NotebookLedger` (or none) and re-renders on
 * each of its changes; the status-bar meter and the runs panel are both one. Its node
 * opts out of MathJax, so no dollar amount is ever typeset as math.
 */
import { Widget } from '@lumino/widgets';

import { NotebookLedger } from './model';

export abstract class LedgerView extends Widget {
  constructor() {
    super();
    this.addClass('tex2jax_ignore');
    this.addClass('mathjax_ignore');
  }

  /** The notebook ledger shown (null: no notebook is active). */
  get ledger(): NotebookLedger | null {
    return this._ledger;
  }

  set ledger(ledger: NotebookLedger | null) {
    this._ledger?.changed.disconnect(this.render, this);
    this._ledger = ledger;
    ledger?.changed.connect(this.render, this);
    this.render();
  }

  /** Draw the ledger's current state. */
  abstract render(): void;

  private _ledger: NotebookLedger | null = null;
}
