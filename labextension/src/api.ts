/**
 * The wflo server extension's API, as the browser sees it: the JSON shapes of
 * `/wflo/api/{budgets,steps}`, the cancel of a running step, and a reader for the `/wflo/api/events` stream of
 * server-sent events. Every request goes through `ServerConnection`, so it carries
 * the server's token and XSRF cookie like any other JupyterLab request.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** One budget, as `GET budgets` and `budget` events give it. */
export interface IBudget {
  kind: string;
  key: string;
  name: string | null;
  limit_micros: number;
  limit_usd: string;
  spent_micros: number;
  spent_usd: string;
  reserved_micros: number;
  reserved_usd: string;
  available_micros: number;
  available_usd: string;
  period: string | null;
}

/** One step of the notebook, as `GET steps` gives it (newest first). */
export interface IStep {
  id: string;
  session_id: string;
  seq: number;
  name: string | null;
  status: string;
  exit_reason: string | null;
  cost_micros: number;
  cost_usd: string;
  calls: number;
  cached_calls: number;
  saved_micros: number;
  saved_usd: string;
  started_at: string | null;
  ended_at: string | null;
  duration_ms: number | null;
  workflow_id: string | null;
  temporal_url: string | null;
}

/** What the event stream says changed. */
export type LedgerEvent =
  | { type: 'budget'; budget: IBudget }
  | { type: 'step'; step_id: string; status: string }
  | { type: 'resync' }
  | { type: 'unreachable'; message: string };

/** The message the server and the UI use when the ledger cannot be read. */
export const UNREACHABLE = 'wflo: ledger unreachable';

/** A refused request: its HTTP status and the server's one-line message. */
export class WfloApiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

function endpointUrl(
  settings: ServerConnection.ISettings,
  endpoint: string,
  query: Record<string, string>
): string {
  const url = URLExt.join(settings.baseUrl, 'wflo', 'api', endpoint);
  return url + URLExt.objectToQueryString(query);
}

async function refusal(response: Response): Promise<WfloApiError> {
  let message = `wflo: the server answered ${response.status}`;
  try {
    const body = (await response.json()) as { message?: unknown };
    if (typeof body.message === 'string') {
      message = body.message;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new WfloApiError(response.status, message);
}

async function getJson<T>(
  settings: ServerConnection.ISettings,
  endpoint: string,
  query: Record<string, string>
): Promise<T> {
  const response = await ServerConnection.makeRequest(
    endpointUrl(settings, endpoint, query),
    { method: 'GET', cache: 'no-store' },
    settings
  );
  if (!response.ok) {
    throw await refusal(response);
  }
  return (await response.json()) as T;
}

/** The budgets of the notebook at `path` (its own and its teams'). */
export async function fetchBudgets(
  settings: ServerConnection.ISettings,
  path: string
): Promise<IBudget[]> {
  const body = await getJson<{ budgets: IBudget[] }>(settings, 'budgets', { path });
  return body.budgets;
}

/** The steps of the notebook at `path`, newest first. */
export async function fetchSteps(
  settings: ServerConnection.ISettings,
  path: string,
  limit = 100
): Promise<IStep[]> {
  const body = await getJson<{ steps: IStep[] }>(settings, 'steps', {
    path,
    limit: String(limit)
  });
  return body.steps;
}

/** Ask the server to cancel the notebook's running step `stepId` (through Temporal, as
 * the notebook's interrupt does); the step's end arrives on the event stream. */
export async function cancelStep(
  settings: ServerConnection.ISettings,
  path: string,
  stepId: string
): Promise<void> {
  const response = await ServerConnection.makeRequest(
    endpointUrl(settings, 'steps/cancel', { path, step: stepId }),
    { method: 'POST', cache: 'no-store' },
    settings
  );
  if (!response.ok) {
    throw await refusal(response);
  }
}

/** The `data:` of one server-sent message block, or null for a comment or retry. */
export function parseEventBlock(block: string): LedgerEvent | null {
  const data: string[] = [];
  for (const line of block.split('\n')) {
    if (line.startsWith('data:')) {
      data.push(line.slice(5).replace(/^ /, ''));
    }
  }
  if (data.length === 0) {
    return null;
  }
  try {
    return JSON.parse(data.join('\n')) as LedgerEvent;
  } catch {
    return null;
  }
}

/**
 * Follow the notebook's event stream until it ends or `signal` aborts, handing each
 * event to `onEvent`. Resolves when the server closes the stream; rejects with a
 * `WfloApiError` when the server refuses it, or with the network's error.
 */
export async function followEvents(
  settings: ServerConnection.ISettings,
  path: string,
  onEvent: (event: LedgerEvent) => void,
  signal: AbortSignal
): Promise<void> {
  const response = await ServerConnection.makeRequest(
    endpointUrl(settings, 'events', { path }),
    { method: 'GET', cache: 'no-store', signal },
    settings
  );
  if (!response.ok) {
    throw await refusal(response);
  }
  if (!response.body) {
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) {
      return;
    }
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
    let end = buffer.indexOf('\n\n');
    while (end >= 0) {
      const event = parseEventBlock(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (event) {
        onEvent(event);
      }
      end = buffer.indexOf('\n\n');
    }
  }
}
