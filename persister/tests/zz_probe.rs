use bson::doc;
use std::time::Duration;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe() {
    let db = testkit::require_mongodb().await.database(&testkit::unique_db("probe"));
    let run = |c: bson::Document| {
        let db = db.clone();
        async move { tokio::time::timeout(Duration::from_secs(5), db.run_command(c)).await }
    };
    let cases = [
        ("insert", doc!{"update":"c","updates":[{"q":{"_id":"a"},"u":{"$setOnInsert":{"x":1},"$set":{"w.0":{"o":1}},"$max":{"m":0_i64}},"upsert":true}],"ordered":false}),
        ("dotted again", doc!{"update":"c","updates":[{"q":{"_id":"a"},"u":{"$setOnInsert":{"x":1},"$set":{"w.1":{"o":1}}},"upsert":true}],"ordered":false}),
        ("max again", doc!{"update":"c","updates":[{"q":{"_id":"a"},"u":{"$setOnInsert":{"x":1},"$max":{"m":5_i64}},"upsert":true}],"ordered":false}),
        ("min new", doc!{"update":"c","updates":[{"q":{"_id":"a"},"u":{"$min":{"n":5_i64}},"upsert":true}],"ordered":false}),
        ("two stmts", doc!{"update":"c","updates":[{"q":{"_id":"b"},"u":{"$setOnInsert":{"x":1}},"upsert":true},{"q":{"_id":"a"},"u":{"$max":{"m":7_i64}},"upsert":true}],"ordered":false}),
    ];
    for (name, c) in cases {
        let r = run(c).await;
        eprintln!("{name}: {r:?}");
    }
}
