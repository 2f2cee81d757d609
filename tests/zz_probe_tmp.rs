mod harness;
use bytes::Bytes;
use harness::garage::Garage;
#[tokio::test]
async fn probe() {
    let g = Garage::shared();
    let b = g.unique_bucket("probe");
    let c = g.client().await;
    let a = c.put_object().bucket(&b).key("k").body(Bytes::from(vec![1u8; 5000]).into()).send().await.unwrap();
    eprintln!("etag A {:?}", a.e_tag());
    let bb = c.put_object().bucket(&b).key("k").body(Bytes::from(vec![2u8; 4000]).into()).send().await.unwrap();
    eprintln!("etag B {:?}", bb.e_tag());
    let r = c.get_object().bucket(&b).key("k").range("bytes=1000-4999").if_match(a.e_tag().unwrap()).send().await;
    match r { Ok(o) => eprintln!("ok etag {:?} len {:?} range {:?}", o.e_tag(), o.content_length(), o.content_range()), Err(e) => eprintln!("err {:?}", e.raw_response().map(|r| r.status())) }
    let r = c.get_object().bucket(&b).key("k").range("bytes=1000-4999").send().await.unwrap();
    eprintln!("plain etag {:?} len {:?} range {:?}", r.e_tag(), r.content_length(), r.content_range());
}
