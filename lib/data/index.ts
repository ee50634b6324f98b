/** The data domain library: benchmark and JSON-lines loaders, the demo task, completion parsers, scoring, splits. */
export * from './types';
export * from './reference';
export * from './jsonl';
export * from './demo-task';
export * from './parse';
export * from './arith';
export * from './score';
export * from './splits';
export * from './validate';
export * from './rationale-checks';
