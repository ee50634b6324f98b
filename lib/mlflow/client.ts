/**
 * A small client of MLflow's REST API (`/api/2.0/mlflow/…`), the calls the export needs and nothing more: experiments,
 * runs and their batches, metric histories, and the Model Registry's models, versions and aliases. Plain `fetch`, so
 * Stepwise needs neither Python nor an MLflow SDK; every call has a deadline, and every list call follows
 * `next_page_token` to the end.
 */

/** An error MLflow answered (`error_code` such as `RESOURCE_DOES_NOT_EXIST`), or a request that got no answer. */
export class MlflowError extends Error {
  constructor(
    message: string,
    /** MLflow's `error_code`; `UNREACHABLE` when no answer came, `HTTP_<status>` when the answer was not MLflow's. */
    readonly code: string,
    readonly status?: number
  ) {
    super(message);
    this.name = 'MlflowError';
  }
}

export interface MlflowTag {
  key: string;
  value: string;
}

export interface MlflowParam {
  key: string;
  value: string;
}

export interface MlflowMetric {
  key: string;
  value: number;
  /** Milliseconds since the epoch. */
  timestamp: number;
  step: number;
}

export interface MlflowExperiment {
  experiment_id: string;
  name: string;
  lifecycle_stage: string;
}

export interface MlflowRun {
  info: { run_id: string; experiment_id: string; status: string; run_name?: string; lifecycle_stage?: string };
  data: { params?: MlflowParam[]; metrics?: MlflowMetric[]; tags?: MlflowTag[] };
}

export interface MlflowModelVersion {
  name: string;
  version: string;
  source: string;
  run_id?: string;
  status?: string;
  tags?: MlflowTag[];
  aliases?: string[];
}

export interface MlflowClientOptions {
  /** Per request (default 10 s): a tracking server that does not answer in that time is treated as down. */
  timeoutMs?: number;
  /** Aborts every request of this client at once (an export's overall deadline). */
  signal?: AbortSignal;
}

/** MLflow's own limits on one `runs/log-batch` call (its REST API documentation). */
export const LOG_BATCH_LIMITS = { metrics: 1000, params: 100, tags: 100, total: 1000 };

/** `HTTP_<status>` answers worth a second try: the server is up but busy or restarting. */
const TRANSIENT = new Set([429, 502, 503, 504]);

export class MlflowClient {
  private readonly base: string;
  private readonly authorization?: string;

  /**
   * @param uri the tracking server, `http(s)://host[:port][/prefix]`; credentials in it (`https://user:pass@host`)
   *   are sent as HTTP Basic auth (MLflow's basic-auth app) and never appear in messages.
   * @throws MlflowError `BAD_URI` for anything else (a `file:` or `databricks` URI needs MLflow's Python client).
   */
  constructor(
    uri: string,
    private readonly opts: MlflowClientOptions = {}
  ) {
    let url: URL;
    try {
      url = new URL(uri);
    } catch {
      // Not echoed: a malformed URI may still hold a password.
      throw new MlflowError('the tracking URI is not a URL; expected http(s)://host:port', 'BAD_URI');
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new MlflowError(`${url.protocol} tracking URIs are not supported; expected http(s)://host:port`, 'BAD_URI');
    }
    if (url.username || url.password) {
      const user = decodeURIComponent(url.username);
      const pass = decodeURIComponent(url.password);
      this.authorization = `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
      url.username = '';
      url.password = '';
    }
    this.base = url.href.replace(/\/+$/, '');
  }

  /** The server's address without credentials, for messages. */
  get where(): string {
    return this.base;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Experiments and runs

  /** The experiment named `name`, or undefined when there is none (a deleted one is returned, marked deleted). */
  async experimentByName(name: string): Promise<MlflowExperiment | undefined> {
    const found = await this.call<{ experiment: MlflowExperiment }>('GET', 'experiments/get-by-name', {
      experiment_name: name,
    }).catch(notFound);
    return found?.experiment;
  }

  async createExperiment(name: string, tags: MlflowTag[] = []): Promise<string> {
    return (await this.call<{ experiment_id: string }>('POST', 'experiments/create', { name, tags })).experiment_id;
  }

  /** Every active run of the experiments matching `filter` (MLflow's search syntax), all pages. */
  async searchRuns(experimentIds: string[], filter: string): Promise<MlflowRun[]> {
    const runs: MlflowRun[] = [];
    let pageToken: string | undefined;
    do {
      const page = await this.call<{ runs?: MlflowRun[]; next_page_token?: string }>('POST', 'runs/search', {
        experiment_ids: experimentIds,
        filter,
        run_view_type: 'ACTIVE_ONLY',
        max_results: 1000,
        ...(pageToken ? { page_token: pageToken } : {}),
      });
      runs.push(...(page.runs ?? []));
      pageToken = page.next_page_token || undefined;
    } while (pageToken);
    return runs;
  }

  async createRun(experimentId: string, runName: string, startTime: number, tags: MlflowTag[]): Promise<MlflowRun> {
    return (
      await this.call<{ run: MlflowRun }>('POST', 'runs/create', {
        experiment_id: experimentId,
        run_name: runName,
        start_time: startTime,
        tags,
      })
    ).run;
  }

  async getRun(runId: string): Promise<MlflowRun> {
    return (await this.call<{ run: MlflowRun }>('GET', 'runs/get', { run_id: runId })).run;
  }

  /** Every point of one metric of a run, all pages (oldest first as MLflow returns them). */
  async metricHistory(runId: string, key: string): Promise<MlflowMetric[]> {
    const points: MlflowMetric[] = [];
    let pageToken: string | undefined;
    do {
      const page = await this.call<{ metrics?: MlflowMetric[]; next_page_token?: string }>(
        'GET',
        'metrics/get-history',
        { run_id: runId, metric_key: key, max_results: '25000', ...(pageToken ? { page_token: pageToken } : {}) }
      );
      points.push(...(page.metrics ?? []));
      pageToken = page.next_page_token || undefined;
    } while (pageToken);
    return points;
  }

  /** Log everything, split into as many `runs/log-batch` calls as MLflow's per-call limits need. */
  async logBatch(
    runId: string,
    batch: { metrics?: MlflowMetric[]; params?: MlflowParam[]; tags?: MlflowTag[] }
  ): Promise<void> {
    const metrics = [...(batch.metrics ?? [])];
    const params = [...(batch.params ?? [])];
    const tags = [...(batch.tags ?? [])];
    while (metrics.length || params.length || tags.length) {
      const p = params.splice(0, LOG_BATCH_LIMITS.params);
      const t = tags.splice(0, LOG_BATCH_LIMITS.tags);
      const m = metrics.splice(0, LOG_BATCH_LIMITS.total - p.length - t.length);
      await this.call('POST', 'runs/log-batch', { run_id: runId, metrics: m, params: p, tags: t });
    }
  }

  async finishRun(runId: string, endTime: number): Promise<void> {
    await this.call('POST', 'runs/update', { run_id: runId, status: 'FINISHED', end_time: endTime });
  }

  // -------------------------------------------------------------------------------------------------------------
  // Model Registry

  /** Create the registered model unless it exists; true when this call created it. */
  async ensureRegisteredModel(name: string, tags: MlflowTag[], description: string): Promise<boolean> {
    const existing = await this.call('GET', 'registered-models/get', { name }).catch(notFound);
    if (existing) return false;
    try {
      await this.call('POST', 'registered-models/create', { name, tags, description });
      return true;
    } catch (err) {
      // Another exporter created it between the two calls: it exists, which is all this asked.
      if (err instanceof MlflowError && err.code === 'RESOURCE_ALREADY_EXISTS') return false;
      throw err;
    }
  }

  /** Every version of a registered model, all pages. */
  async modelVersions(name: string): Promise<MlflowModelVersion[]> {
    const versions: MlflowModelVersion[] = [];
    let pageToken: string | undefined;
    do {
      const page = await this.call<{ model_versions?: MlflowModelVersion[]; next_page_token?: string }>(
        'GET',
        'model-versions/search',
        {
          filter: `name = ${quote(name)}`,
          max_results: '1000',
          ...(pageToken ? { page_token: pageToken } : {}),
        }
      );
      versions.push(...(page.model_versions ?? []));
      pageToken = page.next_page_token || undefined;
    } while (pageToken);
    return versions;
  }

  async createModelVersion(version: {
    name: string;
    source: string;
    runId: string;
    tags: MlflowTag[];
    description: string;
  }): Promise<MlflowModelVersion> {
    const created = await this.call<{ model_version: MlflowModelVersion }>('POST', 'model-versions/create', {
      name: version.name,
      source: version.source,
      run_id: version.runId,
      tags: version.tags,
      description: version.description,
    });
    return created.model_version;
  }

  /** Point `alias` at `version` (MLflow 2.9+); moving an alias that names another version is the same call. */
  async setAlias(name: string, alias: string, version: string): Promise<void> {
    await this.call('POST', 'registered-models/alias', { name, alias, version });
  }

  // -------------------------------------------------------------------------------------------------------------

  /**
   * One REST call: GET with a query string, POST with a JSON body. A busy answer (429, 5xx gateway) is tried once
   * more after a short pause; anything else MLflow refuses is an {@link MlflowError} with its code and message.
   */
  async call<T = unknown>(method: 'GET' | 'POST', endpoint: string, body: Record<string, unknown>): Promise<T> {
    const path = `/api/2.0/mlflow/${endpoint}`;
    let url = `${this.base}${path}`;
    if (method === 'GET') url += `?${new URLSearchParams(body as Record<string, string>).toString()}`;
    for (let attempt = 1; ; attempt++) {
      const signals = [
        AbortSignal.timeout(this.opts.timeoutMs ?? 10_000),
        ...(this.opts.signal ? [this.opts.signal] : []),
      ];
      let res: Response;
      try {
        res = await fetch(url, {
          method,
          headers: {
            ...(method === 'POST' ? { 'content-type': 'application/json' } : {}),
            ...(this.authorization ? { authorization: this.authorization } : {}),
          },
          ...(method === 'POST' ? { body: JSON.stringify(body) } : {}),
          signal: AbortSignal.any(signals),
        });
      } catch (err) {
        const why = err instanceof Error ? ((err.cause as Error | undefined)?.message ?? err.message) : String(err);
        throw new MlflowError(`${method} ${this.base}${path}: no answer (${why})`, 'UNREACHABLE');
      }
      const text = await res.text();
      if (res.ok) return (text ? JSON.parse(text) : {}) as T;
      if (TRANSIENT.has(res.status) && attempt < 2) {
        await new Promise((r) => setTimeout(r, 500));
        continue;
      }
      let code = `HTTP_${res.status}`;
      let message = text.slice(0, 500);
      try {
        const parsed = JSON.parse(text) as { error_code?: string; message?: string };
        code = parsed.error_code ?? code;
        message = parsed.message ?? message;
      } catch {
        // Not MLflow's JSON (a proxy's page): its first bytes are the message.
      }
      throw new MlflowError(`${method} ${this.base}${path}: ${res.status} ${code}: ${message}`, code, res.status);
    }
  }
}

/** A lookup's "not found" as undefined; every other failure stands. */
function notFound(err: unknown): undefined {
  if (err instanceof MlflowError && (err.code === 'RESOURCE_DOES_NOT_EXIST' || err.status === 404)) return undefined;
  throw err;
}

/** A string literal of MLflow's search syntax (single quotes, a quote inside doubled as SQL does). */
export function quote(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}
