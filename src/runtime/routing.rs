//! Input records: decoded, correlated to their instances, and re-keyed onto
//! the shards (or handed to their own shard in place).

use super::*;

impl Runtime {
    /// An operator record: decoded and forwarded to its instance's shard,
    /// where it is applied in order with the instance's events; one that
    /// does not decode is a dead letter with the reason.
    pub(super) fn handle_operator(&mut self, m: Incoming) -> Result<(), RuntimeError> {
        self.consumed(&m)?;
        let ctx = self.ctx();
        let record = match m.payload.as_deref().map(wire::decode_operator) {
            None => ctx.dead_letter(&m, "undecodable", "operator record without a value"),
            Some(Err(e)) => ctx.dead_letter(&m, "undecodable", &e.to_string()),
            Some(Ok(input)) => {
                info!(instance = %format!("{}/{}", input.process, input.key), "operator action received");
                // The trace context the request came with, if any.
                let headers = m
                    .headers
                    .iter()
                    .filter(|(k, _)| k == "traceparent" || k == "tracestate")
                    .cloned()
                    .collect();
                ctx.forward(&input, headers)
            }
        };
        self.send(record)
    }

    /// A domain event: decode, find its processes, and forward it to their shards.
    /// Returns the records to process in place on this process's shards,
    /// with their input already decoded.
    pub(super) fn handle_input(&mut self, m: Incoming) -> Result<Vec<Local>, RuntimeError> {
        if self.in_place
            && let Some(r) = self.restoring.get_mut(&m.partition)
        {
            // Its shard is restoring: held (not consumed) so the partition's
            // order is kept.
            r.held.push(m);
            return Ok(Vec::new());
        }
        let plain = cloudevents::PlainJson {
            type_field: self.cfg.events.type_field.clone(),
            id_field: self.cfg.events.id_field.clone(),
        };
        let rec = m.event_record();
        let size = m.payload.as_ref().map_or(0, Vec::len);
        let limit = self.cfg.events.max_payload_bytes;
        let decoded = if size > limit {
            Err((
                "oversized-payload",
                format!(
                    "payload of {size} bytes is above the limit of {limit} bytes (events.max_payload_bytes)"
                ),
            ))
        } else {
            cloudevents::decode(&rec, &plain).map_err(|e| ("undecodable", e.to_string()))
        };
        let decoded = decoded.map(|event| (crate::shard::route(&self.registry, &event), event));
        if let Ok((routes, _)) = &decoded
            && self.stops_at_cap(&m, routes)
        {
            // Neither consumed nor processed: its input stopped here.
            return Ok(Vec::new());
        }
        self.stats.event_consumed(&m.topic);
        self.consumed(&m)?;
        let mut local = Vec::new();
        let mut span = self.tracer.input(&m);
        let mut out = Vec::new();
        let ctx = self.ctx();
        match decoded {
            Err((kind, e)) => {
                span.error(&e);
                out.push(ctx.dead_letter(&m, kind, &e))
            }
            Ok((routes, event)) => {
                if let Some(f) = &self.faults {
                    f.on_routing(&event.id);
                }
                span.set("messaging.message.id", event.id.clone());
                span.set("cloudevents.event_id", event.id.clone());
                span.set("cloudevents.event_type", event.kind.clone());
                span.set("cloudevents.event_source", event.source.clone());
                if self.cfg.log.payloads {
                    debug!(topic = %m.topic, partition = m.partition, offset = m.offset, event_id = %event.id, kind = %event.kind, data = %event.data, "event consumed");
                }
                for (process, key) in &routes.to {
                    span.event(
                        "routed",
                        vec![
                            opentelemetry::KeyValue::new("baton.process", process.clone()),
                            opentelemetry::KeyValue::new("baton.instance.key", key.clone()),
                        ],
                    );
                    let id = format!("{process}/{key}");
                    let input = |origin| shard::ShardInput {
                        process: process.clone(),
                        key: key.clone(),
                        input: shard::Kind::Event {
                            event: event.clone(),
                            origin,
                        },
                    };
                    if self.in_place
                        && shard_of(&id, self.partitions) == m.partition
                        && self.shards.contains_key(&m.partition)
                    {
                        // Same shard as the record's own partition: no
                        // hop, and the event goes as it was decoded.
                        self.stats.routed(true);
                        let record = Incoming {
                            topic: m.topic.clone(),
                            partition: m.partition,
                            offset: m.offset,
                            timestamp: m.timestamp,
                            key: Some(id.into_bytes()),
                            headers: span.headers(),
                            payload: m.payload.clone(),
                        };
                        local.push((record, Some(input(None))));
                    } else {
                        let origin = wire::Origin {
                            topic: m.topic.clone(),
                            partition: m.partition,
                            offset: m.offset,
                        };
                        let fwd = ctx.forward(&input(Some(origin)), span.headers());
                        if self.in_place
                            && !self.partitioner_warned.load(Ordering::Relaxed)
                            && m.key.as_deref() == Some(key.as_bytes())
                            && self.shards.contains_key(&m.partition)
                        {
                            // Keyed by its correlation key, yet on another
                            // partition than murmur2 picks.
                            self.partitioner_warned.store(true, Ordering::Relaxed);
                            warn!(topic = %m.topic, partition = m.partition, %key, shard = ?fwd.partition, "an input keyed by its correlation key is not on the partition Kafka's default partitioner picks, so it takes the repartition hop: its producer must partition with murmur2 (librdkafka clients: partitioner=murmur2_random); baton_events_routed_total{{path=\"repartition\"}} counts these");
                        }
                        self.stats.routed(false);
                        out.push(fwd);
                    }
                }
                if let Some((kind, reason)) = routes.dead(&event) {
                    span.error(&reason);
                    out.push(ctx.dead_letter(&m, kind, &reason));
                } else if !routes.failures.is_empty() {
                    debug!(
                        failures = ?routes.failures,
                        "processes that could not correlate an event another process took"
                    );
                }
            }
        }
        if let Some(big) = out.iter().find(|r| kafka::record_size(r) > ctx.max_record) {
            // Nothing of it is produced, and no state changed yet.
            let reason = format!(
                "forwarding it would produce a record of {} bytes to {}, above the limit of {} bytes (kafka.max_record_bytes)",
                kafka::record_size(big),
                big.topic,
                ctx.max_record
            );
            span.error(&reason);
            out = vec![ctx.dead_letter(&m, "oversized", &reason)];
            local.clear();
        }
        for r in out {
            self.send(r)?;
        }
        Ok(local)
    }
}
