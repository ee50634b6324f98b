/** The CLI's shared flag parsers: ports, as `stepwise worker`, `ui` and `codec-server` read them. */
import test from 'ava';
import { InvalidArgumentError } from 'commander';
import { parsePort, portFlag } from '../cli/shared/options';
import { InputError } from '../lib/errors';

test('parsePort takes a port number from its minimum to 65535', (t) => {
  t.is(parsePort('9464', 'STEPWISE_METRICS_PORT'), 9464);
  t.is(parsePort(' 1 ', '--metrics-port'), 1);
  t.is(parsePort('65535', '--port', 0), 65535);
  t.is(parsePort('0', '--port', 0), 0, 'where the command takes any free port');
});

test('parsePort refuses anything else with an InputError naming the field and the value', (t) => {
  for (const bad of ['0', '65536', '-1', '80.5', '1e3', '0x50', '', 'http', '80 81']) {
    const err = t.throws(() => parsePort(bad, 'STEPWISE_METRICS_PORT'), { instanceOf: InputError }, bad);
    t.is(err?.field, 'STEPWISE_METRICS_PORT');
    t.is(err?.message, `STEPWISE_METRICS_PORT is '${bad}'; expected a port number from 1 to 65535`);
  }
  t.throws(() => parsePort('-1', '--port', 0), { message: "--port is '-1'; expected a port number from 0 to 65535" });
});

test('portFlag reports a bad port as a usage error, before any command runs', (t) => {
  t.is(portFlag('--port', 0)('8080'), 8080);
  t.throws(() => portFlag('--port', 0)('70000'), {
    instanceOf: InvalidArgumentError,
    message: "--port is '70000'; expected a port number from 0 to 65535",
  });
});
