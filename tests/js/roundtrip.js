// kafkajs round trip against a Tidewater Kafka listener, driven by test_kafka_kafkajs.py.
//
//   node roundtrip.js <bootstrap host:port> <topic> <groupId> <count>
//
// Creates the topic (3 partitions) with the admin client, sends <count> keyed records with
// headers from an idempotent producer (acks = all), reads them back with a consumer in group
// <groupId>, and prints one JSON object on stdout. Logs go to stderr. Exit 0 on success; on any
// failure (or after 60 s) prints {"error": "..."} and exits 1.
'use strict';

const { Kafka, logLevel, Partitioners } = require('kafkajs');

const [brokers, topic, groupId, countText] = process.argv.slice(2);
const count = Number(countText);
if (!brokers || !topic || !groupId || !(count > 0)) {
  console.error('usage: node roundtrip.js <bootstrap> <topic> <groupId> <count>');
  process.exit(2);
}

function fail(error) {
  process.stdout.write(JSON.stringify({ error: String(error && error.stack ? error.stack : error) }) + '\n');
  process.exit(1);
}

setTimeout(() => fail('timed out after 60 s'), 60000);

const stderrLog = () => ({ level, log }) => {
  process.stderr.write(`[kafkajs ${level}] ${log.message} ${JSON.stringify(log)}\n`);
};

const kafka = new Kafka({
  clientId: 'tidewater-kafkajs-test',
  brokers: [brokers],
  logLevel: logLevel.WARN,
  logCreator: stderrLog,
  connectionTimeout: 5000,
  requestTimeout: 15000,
  retry: { retries: 5, initialRetryTime: 200 },
});

async function main() {
  const admin = kafka.admin();
  await admin.connect();
  const created = await admin.createTopics({
    topics: [{ topic, numPartitions: 3, replicationFactor: 1 }],
    waitForLeaders: true,
  });
  const meta = await admin.fetchTopicMetadata({ topics: [topic] });
  const partitions = meta.topics[0].partitions.map((p) => p.partitionId).sort();

  const producer = kafka.producer({
    idempotent: true,
    maxInFlightRequests: 1,
    retry: { retries: Number.MAX_SAFE_INTEGER, maxRetryTime: 2000 }, // bounded by the 60 s timer
    createPartitioner: Partitioners.DefaultPartitioner,
  });
  await producer.connect();
  const produced = [];
  const half = Math.floor(count / 2);
  for (const [from, to] of [[0, half], [half, count]]) {
    const messages = [];
    for (let i = from; i < to; i++) {
      messages.push({
        key: `key-${i % 7}`,
        value: `js-${i}`,
        headers: { seq: String(i), client: 'kafkajs' },
      });
    }
    const result = await producer.send({ topic, acks: -1, messages });
    for (const r of result) {
      produced.push({ partition: r.partition, baseOffset: Number(r.baseOffset), errorCode: r.errorCode });
    }
  }
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 500 });
  await consumer.connect();
  await consumer.subscribe({ topics: [topic], fromBeginning: true });
  const consumed = [];
  await new Promise((resolve, reject) => {
    consumer
      .run({
        autoCommit: true,
        eachMessage: async ({ partition, message }) => {
          const headers = {};
          for (const [k, v] of Object.entries(message.headers || {})) headers[k] = v.toString();
          consumed.push({
            partition,
            offset: Number(message.offset),
            key: message.key && message.key.toString(),
            value: message.value && message.value.toString(),
            headers,
          });
          if (consumed.length >= count) resolve();
        },
      })
      .catch(reject);
  });
  await consumer.disconnect(); // commits what was consumed
  const committed = await admin.fetchOffsets({ groupId, topics: [topic] });
  const groups = await admin.describeGroups([groupId]);
  await admin.disconnect();

  process.stdout.write(JSON.stringify({
    created,
    partitions,
    produced,
    consumed,
    committed: committed[0].partitions.map((p) => ({ partition: p.partition, offset: Number(p.offset) })),
    groupState: groups.groups[0].state,
  }) + '\n');
  process.exit(0);
}

main().catch(fail);
