/**
 * How amounts, shares and durations read in the status bar and the panel.
 */
import { IBudget, IStep } from './api';

/** The colour step of a budget in use: below 50%, then 50, 75, 90 and 100%. */
export type Level = 'ok' | 'l50' | 'l75' | 'l90' | 'l100';

/** Share of the limit spent or reserved, from 0 (a zero limit counts as full). */
export function usedShare(budget: IBudget): number {
  const used = budget.spent_micros + budget.reserved_micros;
  if (budget.limit_micros <= 0) {
    return used > 0 ? 1 : 0;
  }
  return used / budget.limit_micros;
}

export function levelOf(share: number): Level {
  if (share >= 1) {
    return 'l100';
  }
  if (share >= 0.9) {
    return 'l90';
  }
  if (share >= 0.75) {
    return 'l75';
  }
  if (share >= 0.5) {
    return 'l50';
  }
  return 'ok';
}

/** `notebook budget` or `team NAME` (the server names a team budget `team NAME`). */
export function budgetLabel(budget: IBudget): string {
  if (budget.kind === 'team') {
    return budget.name || `team ${budget.key}`;
  }
  return `${budget.kind} budget`;
}

/** `$0.0123 / $1.00`, plus the reserved part when there is one. */
export function spendLine(budget: IBudget): string {
  const line = `${budget.spent_usd} / ${budget.limit_usd}`;
  return budget.reserved_micros > 0 ? `${line} (+${budget.reserved_usd} reserved)` : line;
}

export function percent(share: number): string {
  return `${Math.round(share * 100)}%`;
}

/** `850 ms`, `12.4 s`, `3 min 5 s`; an em dash when unknown. */
export function duration(ms: number | null): string {
  if (ms === null || ms === undefined) {
    return '—';
  }
  if (ms < 1000) {
    return `${Math.round(ms)} ms`;
  }
  if (ms < 60_000) {
    return `${(ms / 1000).toFixed(1)} s`;
  }
  const seconds = Math.round(ms / 1000);
  return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
}

/** The step's name, or `step N` when it has none. */
export function stepName(step: IStep): string {
  return step.name || `step ${step.seq}`;
}

/** The basename of a contents path. */
export function basename(path: string): string {
  const parts = path.split('/');
  return parts[parts.length - 1] || path;
}

/** Micro-dollars as the server writes them: `$0.50`, `$0.000123`, `-$1.00`. */
export function usd(micros: number): string {
  const sign = micros < 0 ? '-' : '';
  const magnitude = Math.abs(Math.round(micros));
  const whole = Math.floor(magnitude / 1e6);
  const fraction = String(magnitude % 1e6).padStart(6, '0');
  if (magnitude % 10_000 === 0) {
    return `${sign}$${whole}.${fraction.slice(0, 2)}`;
  }
  return `${sign}$${whole}.${fraction.replace(/0+$/, '')}`;
}
