/**
 * The contract every side shares: task queues, stage names, the queries and signals, and every activity's input and
 * result type. It sits at the bottom: activities, workflows, workers and clients import from here, never from each
 * other. Declarations only (the query and signal definitions are plain name holders), so the workflow bundle may
 * import it.
 */
export * from './definitions';
export * from './search-attributes';
export type * from './stages';
