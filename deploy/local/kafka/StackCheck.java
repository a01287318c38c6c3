// Readiness check and topic setup of the local Kafka broker (deploy/local/stack).
//
// Run as a single-file program on the broker's own class path:
//   java -cp '<kafka-libs>/*' StackCheck.java <bootstrap> <topic>:<partitions> ...
// It creates each listed topic if missing, then produces one record to the
// topic `quiz-stack-check` and consumes it back. Exit 0 means a produce/consume
// round trip worked; any failure prints one line on stderr and exits 1.

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class StackCheck {
    static final String CHECK_TOPIC = "quiz-stack-check";

    public static void main(String[] args) {
        if (args.length < 1) {
            System.err.println("usage: StackCheck <bootstrap> [topic:partitions ...]");
            System.exit(2);
        }
        try {
            run(args[0], List.of(args).subList(1, args.length));
        } catch (Exception e) {
            Throwable cause = e instanceof ExecutionException && e.getCause() != null ? e.getCause() : e;
            System.err.println("kafka check against " + args[0] + " failed: " + cause);
            System.exit(1);
        }
    }

    static void run(String bootstrap, List<String> topics) throws Exception {
        Properties common = new Properties();
        common.put("bootstrap.servers", bootstrap);
        common.put("request.timeout.ms", "5000");
        common.put("default.api.timeout.ms", "10000");

        List<NewTopic> wanted = new ArrayList<>();
        wanted.add(new NewTopic(CHECK_TOPIC, 1, (short) 1));
        for (String t : topics) {
            String[] parts = t.split(":");
            wanted.add(new NewTopic(parts[0], parts.length > 1 ? Integer.parseInt(parts[1]) : 8, (short) 1));
        }
        try (Admin admin = Admin.create(common)) {
            Set<String> existing = admin.listTopics().names().get(10, TimeUnit.SECONDS);
            List<NewTopic> missing = new ArrayList<>();
            for (NewTopic t : wanted) {
                if (!existing.contains(t.name())) missing.add(t);
            }
            if (!missing.isEmpty()) {
                try {
                    admin.createTopics(missing).all().get(20, TimeUnit.SECONDS);
                } catch (ExecutionException e) {
                    if (!(e.getCause() instanceof TopicExistsException)) throw e;
                }
            }
        }

        String marker = UUID.randomUUID().toString();
        Properties p = new Properties();
        p.putAll(common);
        p.put("acks", "all");
        p.put("enable.idempotence", "true");
        p.put("delivery.timeout.ms", "15000");
        p.put("key.serializer", StringSerializer.class.getName());
        p.put("value.serializer", StringSerializer.class.getName());
        long offset;
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(p)) {
            offset = producer.send(new ProducerRecord<>(CHECK_TOPIC, 0, "check", marker))
                    .get(20, TimeUnit.SECONDS).offset();
        }

        Properties c = new Properties();
        c.putAll(common);
        c.put("key.deserializer", StringDeserializer.class.getName());
        c.put("value.deserializer", StringDeserializer.class.getName());
        c.put("enable.auto.commit", "false");
        TopicPartition tp = new TopicPartition(CHECK_TOPIC, 0);
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(c)) {
            consumer.assign(List.of(tp));
            consumer.seek(tp, offset);
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
            while (System.nanoTime() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(500))) {
                    if (marker.equals(r.value())) {
                        return;
                    }
                }
            }
        }
        throw new IllegalStateException("produced a record to " + CHECK_TOPIC + " but did not read it back within 20 s");
    }
}
