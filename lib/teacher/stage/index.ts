/**
 * The teacher stage, as plain library code over an artifact store: plan the shards, run one shard (direct calls,
 * or a provider batch in three steps: submit, poll, collect), and assemble the responses. The `promptTeacher`
 * activities (`activities/prompt-teacher.ts`) wrap each step with heartbeats, cancellation and error mapping; the
 * `teacherStage` workflow fans the shards out over every worker serving the queue.
 *
 * Every step can be retried or run again from scratch: what it finds in the store (see `layout.ts` for the key
 * layout) decides what is left to do, and nothing is paid for twice.
 */
export * from './types';
export { planShards } from './plan';
export { promptShard, type PromptShardHooks } from './direct';
export { submitShardBatch, pollShardBatch, collectShardBatch, type CollectHooks } from './batch';
export { assembleResponses, type AssembleHooks } from './finish';
export {
  endpointOf,
  modelOf,
  shardTeacher,
  callingSpec,
  type ApiKeyLookup,
  type CallingSpec,
  type Endpoint,
  type ScriptedTeacherProvider,
  type StageDeps,
} from './endpoint';
export {
  batchKey,
  doneKey,
  identityOf,
  journalPrefix,
  readPlan,
  shardKeyOf,
  type BatchRecord,
  type PlanDoc,
  type ShardDone,
} from './layout';
export { attemptBudget, attemptsPrefix, budgetFor, journalUsage, priceOf, successes } from './accounting';
export { pauseKey, sharedPauseLimiter, PAUSE_CACHE_MS, type PauseRecord } from './shared-pause';
export { isFinished, labeller, openShard, shardOutcome, type OpenShard, type ShardCounts } from './open-shard';
