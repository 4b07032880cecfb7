/**
 * The HTTP core of the console's API client: same-origin requests, the bearer token,
 * and turning every failure into an ApiError whose message a person can act on.
 */

const TOKEN_KEY = 'iotcloud.token';

interface StoredToken {
  accessToken: string;
  /** Epoch milliseconds after which the server will refuse the token. */
  expiresAt: number | null;
}

export class ApiError extends Error {
  /** HTTP status, or 0 when the server could not be reached at all. */
  readonly status: number;
  /** The raw `detail` of a FastAPI-style error body, when there was one. */
  readonly detail: unknown;

  constructor(status: number, message: string, detail?: unknown) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.detail = detail;
  }
}

export function storeToken(accessToken: string, expiresInSeconds: number | null): void {
  const stored: StoredToken = {
    accessToken,
    expiresAt: expiresInSeconds == null ? null : Date.now() + expiresInSeconds * 1000,
  };
  localStorage.setItem(TOKEN_KEY, JSON.stringify(stored));
  notifyAuthListeners();
}

export function clearToken(): void {
  if (localStorage.getItem(TOKEN_KEY) === null) return;
  localStorage.removeItem(TOKEN_KEY);
  notifyAuthListeners();
}

/** The stored token, or null when there is none or it has expired. */
export function getToken(): string | null {
  const raw = localStorage.getItem(TOKEN_KEY);
  if (raw === null) return null;
  try {
    const stored = JSON.parse(raw) as StoredToken;
    if (typeof stored.accessToken !== 'string') return null;
    if (stored.expiresAt !== null && stored.expiresAt <= Date.now()) return null;
    return stored.accessToken;
  } catch {
    return null;
  }
}

const authListeners = new Set<() => void>();

/** Called whenever the token is stored or dropped (sign-in, sign-out, a 401). */
export function subscribeToAuth(listener: () => void): () => void {
  authListeners.add(listener);
  return () => authListeners.delete(listener);
}

function notifyAuthListeners(): void {
  for (const listener of authListeners) listener();
}

/** Render a FastAPI `detail` (string, object, or 422 list of {loc, msg, type}) as text. */
export function formatDetail(detail: unknown): string {
  if (detail == null) return '';
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) {
    return detail.map(formatDetailItem).filter(Boolean).join('; ');
  }
  if (typeof detail === 'object') {
    const record = detail as Record<string, unknown>;
    // Schema refusals: {message, errors: [{pointer, rule, message}]}.
    if (typeof record.message === 'string' && Array.isArray(record.errors) && record.errors.length > 0) {
      const rules = record.errors.map(formatViolation).filter(Boolean);
      if (rules.length > 0) return `${record.message}: ${rules.join('; ')}`;
    }
    for (const key of ['message', 'msg', 'error', 'detail']) {
      const value = record[key];
      if (typeof value === 'string') return value;
    }
  }
  return JSON.stringify(detail);
}

function formatViolation(item: unknown): string {
  if (!item || typeof item !== 'object') return '';
  const { pointer, rule, message } = item as { pointer?: unknown; rule?: unknown; message?: unknown };
  if (typeof pointer !== 'string') return '';
  const where = pointer === '' ? '(whole document)' : pointer;
  const what = typeof rule === 'string' && rule ? ` [${rule}]` : '';
  return `${where}${what} ${typeof message === 'string' ? message : ''}`.trim();
}

function formatDetailItem(item: unknown): string {
  if (item && typeof item === 'object' && 'msg' in item) {
    const { loc, msg } = item as { loc?: unknown; msg: unknown };
    // "body" and "query" only say where FastAPI looked; the field path is what helps.
    const path = Array.isArray(loc)
      ? loc.filter((part) => part !== 'body' && part !== 'query' && part !== 'path').join('.')
      : '';
    return path ? `${path}: ${String(msg)}` : String(msg);
  }
  return formatDetail(item);
}

const STATUS_MESSAGES: Record<number, string> = {
  400: 'The request was not accepted',
  401: 'Your session has expired. Please sign in again',
  403: 'You do not have permission to do this',
  404: 'Not found',
  409: 'Conflict with the current state',
  412: 'Someone else changed the desired state',
  413: 'Too large',
  422: 'The request was not valid',
  429: 'Too many requests. Wait a moment and try again',
  503: 'The service is temporarily unavailable. Try again shortly',
};

export function messageForStatus(status: number, detail: unknown): string {
  const base =
    STATUS_MESSAGES[status] ??
    (status >= 500 ? `The server failed (HTTP ${status}). Try again shortly` : `Request failed (HTTP ${status})`);
  const text = formatDetail(detail);
  if (!text || text === base || status === 401) return `${base}.`;
  return `${base}: ${text}`;
}

export interface RequestOptions {
  method?: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** Sent as JSON. */
  json?: unknown;
  /** Sent as application/x-www-form-urlencoded. */
  form?: Record<string, string>;
  headers?: Record<string, string>;
  query?: Record<string, string | number | null | undefined>;
  /** Send the bearer token and treat a 401 as "session over" (default true). */
  auth?: boolean;
  signal?: AbortSignal;
}

export interface ApiResponse<T> {
  body: T;
  headers: Headers;
  status: number;
}

/** Relative URL, because the console is served by the API server itself. */
function buildUrl(path: string, query: RequestOptions['query']): string {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== '') params.set(key, String(value));
  }
  const qs = params.toString();
  return qs ? `${path}?${qs}` : path;
}

export async function request<T>(path: string, options: RequestOptions = {}): Promise<ApiResponse<T>> {
  const { method = 'GET', json, form, query, auth = true, signal } = options;
  const headers: Record<string, string> = { Accept: 'application/json', ...options.headers };
  let body: string | undefined;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    headers['Content-Type'] = 'application/x-www-form-urlencoded';
    body = new URLSearchParams(form).toString();
  }
  if (auth) {
    const token = getToken();
    if (token === null) {
      clearToken();
      throw new ApiError(401, messageForStatus(401, null));
    }
    headers.Authorization = `Bearer ${token}`;
  }

  let response: Response;
  try {
    response = await fetch(buildUrl(path, query), { method, headers, body, signal });
  } catch (error) {
    if (error instanceof DOMException && error.name === 'AbortError') throw error;
    throw new ApiError(0, 'Cannot reach the server. Check your connection and try again.');
  }

  const payload = await readBody(response);
  if (!response.ok) {
    const detail = payload && typeof payload === 'object' && 'detail' in payload ? payload.detail : payload;
    if (response.status === 401 && auth) clearToken();
    throw new ApiError(response.status, messageForStatus(response.status, detail), detail);
  }
  return { body: payload as T, headers: response.headers, status: response.status };
}

async function readBody(response: Response): Promise<unknown> {
  if (response.status === 204) return null;
  const text = await response.text().catch(() => '');
  if (!text) return null;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    // A proxy's HTML error page, say: show its status, not its markup.
    return response.ok ? text : null;
  }
}
