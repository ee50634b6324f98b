/**
 * `stepwise cancel`: ask a running pipeline to stop; its activities see the cancellation at their next heartbeat.
 */
import { Command } from 'commander';
import { connectClient, temporalTarget } from '../../workers/connection';

export function addCancelCommand(program: Command): void {
  program
    .command('cancel')
    .description('cancel a running pipeline (needs TEMPORAL_ADDRESS)')
    .argument('<workflowId>')
    .action(async (workflowId: string) => {
      const temporal = await connectClient(temporalTarget());
      try {
        await temporal.client.workflow.getHandle(workflowId).cancel();
        console.log(`cancellation requested for ${workflowId}`);
      } finally {
        await temporal.close();
      }
    });
}
