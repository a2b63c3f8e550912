// An edge node built with Eclipse Tahu's sparkplug-client (npm), driven over stdin by
// tests/integration/test_sparkplug.py; the same protocol as pysparkplug_node.py. Arguments:
// host port group node device. Commands, a JSON object a line: {"op": "data", "temperature":
// 19.5, "humidity": 55.0} publishes NDATA and DDATA by alias ("compressed": the same,
// compressed by the client with DEFLATE and GZIP); {"op": "unknown"} sends an alias
// no BIRTH defined; {"op": "exit"}. Events: born, rebirth, reborn, published.
"use strict";
const readline = require("readline");
const sparkplug = require("sparkplug-client");

const [host, port, group, node, device] = process.argv.slice(2);
const client = sparkplug.newClient({
  serverUrl: `tcp://${host}:${port}`,
  username: "",
  password: "",
  groupId: group,
  edgeNode: node,
  clientId: `tahu-${node}-${process.pid}`,
  version: "spBv1.0",
  publishDeath: true,
});

function say(event) {
  process.stdout.write(JSON.stringify({ event }) + "\n");
}

function births() {
  client.publishNodeBirth({
    timestamp: Date.now(),
    metrics: [
      { name: "Temperature", alias: 1, value: 20.0, type: "Double" },
      { name: "Count", alias: 2, value: -7, type: "Int32" },
      { name: "Node Control/Rebirth", alias: 3, value: false, type: "Boolean" },
    ],
  });
  client.publishDeviceBirth(device, {
    timestamp: Date.now(),
    metrics: [{ name: "Humidity", alias: 10, value: 40.0, type: "Float" }],
  });
}

client.on("birth", () => {
  births();
  say("born");
});

client.on("ncmd", (payload) => {
  for (const metric of payload.metrics) {
    if (metric.name === "Node Control/Rebirth" && metric.value) {
      say("rebirth");
      births();
      say("reborn");
    }
  }
});

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const command = JSON.parse(line);
  if (command.op === "data") {
    client.publishNodeData({
      timestamp: Date.now(),
      metrics: [{ alias: 1, value: command.temperature, type: "Double" }],
    });
    client.publishDeviceData(device, {
      timestamp: Date.now(),
      metrics: [{ alias: 10, value: command.humidity, type: "Float" }],
    });
    say("published");
  } else if (command.op === "compressed") {
    // The client's own compression: DEFLATE for the node, GZIP for the device.
    client.publishNodeData(
      {
        timestamp: Date.now(),
        metrics: [{ alias: 1, value: command.temperature, type: "Double" }],
      },
      { compress: true },
    );
    client.publishDeviceData(
      device,
      {
        timestamp: Date.now(),
        metrics: [{ alias: 10, value: command.humidity, type: "Float" }],
      },
      { compress: true, algorithm: "GZIP" },
    );
    say("published");
  } else if (command.op === "unknown") {
    client.publishNodeData({
      timestamp: Date.now(),
      metrics: [{ alias: 99, value: 1.0, type: "Double" }],
    });
    say("published");
  } else if (command.op === "exit") {
    client.stop();
    process.exit(0);
  }
});
