//! Requests paused for keys: owners and waiters that leave, answers that
//! never come, keys shared across workers and kept across pushes.

use super::*;

#[test]
fn fetch_owner_leaving_does_not_strand_other_waiters() {
    let (mut f, mut m) = (filter(), Mock::new());
    request(&mut f, &mut m, 2, Some(&good()));
    request(&mut f, &mut m, 3, Some(&good()));
    assert_eq!(m.callouts[0].owner, 2);
    // Client 2 leaves: Envoy cancels its callout.
    client_leaves(&mut f, &mut m, 2);
    assert_eq!(m.callouts.len(), 2, "the root context fetches again");
    assert_eq!(m.callouts[1].owner, ROOT);
    let c = m.callouts[1].clone();
    f.on_callout(&mut m, c.token, &ok(&keys_k1()));
    assert!(m.stream(3).resumed);
}

#[test]
fn waiter_that_left_is_skipped() {
    let (mut f, mut m) = (filter(), Mock::new());
    request(&mut f, &mut m, 2, Some(&good()));
    request(&mut f, &mut m, 3, Some(&good()));
    m.streams.remove(&3);
    m.enter(2);
    let c = m.callouts[0].clone();
    f.on_callout(&mut m, c.token, &ok(&keys_k1()));
    assert!(m.stream(2).resumed);
}

#[test]
fn waiters_time_out_with_503_if_no_answer_ever_comes() {
    let (mut f, mut m) = (filter(), Mock::new());
    request(&mut f, &mut m, 2, Some(&good()));
    m.now_ms += MAX_WAIT_MS + 1;
    m.enter(ROOT);
    f.on_tick(&mut m);
    assert_eq!(m.sent(2).unwrap().status, 503);
}

#[test]
fn a_fetch_publishes_its_keys_before_it_frees_the_lease() {
    // Another worker that takes the lease the moment it is free syncs first:
    // it must find the keys there, not fetch them again (on real Envoy,
    // first requests on both workers made two JWKS GETs now and then).
    let shared = Shared::default();
    let (mut f1, mut m1) = (filter(), Mock::with_shared(shared.clone()));
    request(&mut f1, &mut m1, 2, Some(&good()));
    let c = m1.callouts[0].clone();
    m1.writes.clear();
    f1.on_callout(&mut m1, c.token, &ok(&keys_k1()));
    // The keys are `tef:tef:jwks:<hex>`, their lease `….lease`.
    let last = |f: &dyn Fn(&String) -> bool| m1.writes.iter().rposition(f).unwrap();
    let published = last(&|k| k.contains(":jwks:") && !k.contains('.'));
    let freed = last(&|k| k.ends_with(".lease"));
    assert!(published < freed, "{:?}", m1.writes);
    let (mut f2, mut m2) = (filter(), Mock::with_shared(shared));
    assert_eq!(request(&mut f2, &mut m2, 2, Some(&good())), Action::Continue);
    assert!(m2.callouts.is_empty());
}

#[test]
fn keys_a_later_request_adopted_release_the_earlier_waiters_on_the_tick() {
    let shared = Shared::default();
    let (mut f1, mut m1) = (filter(), Mock::with_shared(shared.clone()));
    let (mut f2, mut m2) = (filter(), Mock::with_shared(shared));
    request(&mut f1, &mut m1, 2, Some(&good()));
    // Worker 2's first request waits for worker 1's fetch.
    assert_eq!(request(&mut f2, &mut m2, 2, Some(&good())), Action::Pause);
    let c = m1.callouts[0].clone();
    f1.on_callout(&mut m1, c.token, &ok(&keys_k1()));
    // Its next request finds the keys published and passes at once.
    assert_eq!(request(&mut f2, &mut m2, 3, Some(&good())), Action::Continue);
    // The first is released on the next tick, not at the next refetch.
    m2.now_ms += 500;
    m2.enter(ROOT);
    f2.on_tick(&mut m2);
    assert!(m2.stream(2).resumed);
    assert!(
        m2.callouts.is_empty() && m1.callouts.len() == 1,
        "one fetch for the proxy"
    );
}

#[test]
fn workers_share_one_fetch_through_shared_data() {
    let shared = Shared::default();
    let (mut f1, mut m1) = (filter(), Mock::with_shared(shared.clone()));
    let (mut f2, mut m2) = (filter(), Mock::with_shared(shared));
    request(&mut f1, &mut m1, 2, Some(&good()));
    // Worker 2 sees worker 1's lease and waits instead of fetching.
    assert_eq!(request(&mut f2, &mut m2, 2, Some(&good())), Action::Pause);
    assert!(m2.callouts.is_empty());
    let c = m1.callouts[0].clone();
    f1.on_callout(&mut m1, c.token, &ok(&keys_k1()));
    assert!(m1.stream(2).resumed);
    // Worker 2 picks the published keys up on its next tick.
    m2.enter(ROOT);
    f2.on_tick(&mut m2);
    assert!(m2.stream(2).resumed);
    assert!(m2.callouts.is_empty());
}

#[test]
fn a_push_keeps_the_keys_of_an_issuer_it_keeps() {
    // The same issuer and JWKS, another audience: the published keys serve.
    let shared = Shared::default();
    let (mut f1, mut m1) = (filter(), Mock::with_shared(shared.clone()));
    warm(&mut f1, &mut m1);
    let mut v = config_json();
    v["oidc"]["audience"] = "other".into();
    let b = plugin_config::parse(v.to_string().as_bytes()).unwrap();
    m1.enter(ROOT);
    f1.on_tick(&mut m1);
    assert_eq!(
        m1.metric("token_exchange_filter.shared_data.keys_created"),
        3,
        "the keys, their lease and the last attempt"
    );
    let (mut f2, mut m2) = (Filter::new(&b, "tef").unwrap(), Mock::with_shared(shared.clone()));
    m2.enter(ROOT);
    f2.on_tick(&mut m2);
    assert!(m2.callouts.is_empty(), "no fetch: the issuer's keys are in shared data");
    f2.on_tick(&mut m2);
    assert_eq!(m2.metric("token_exchange_filter.shared_data.keys_created"), 0);
    // Another JWKS URL, or another plugin: keys of their own.
    v["oidc"]["jwksUrl"] = "http://127.0.0.1:9000/other-keys".into();
    let c = plugin_config::parse(v.to_string().as_bytes()).unwrap();
    for (config, plugin) in [(&c, "tef"), (&b, "other-plugin")] {
        let (mut f3, mut m3) = (Filter::new(config, plugin).unwrap(), Mock::with_shared(shared.clone()));
        m3.enter(ROOT);
        f3.on_tick(&mut m3);
        assert_eq!(m3.callouts.len(), 1, "{plugin}: fetches keys of its own");
    }
    let mut bases: Vec<String> = shared
        .borrow()
        .keys()
        .map(|k| k.trim_end_matches(".lease").trim_end_matches(".attempt").to_string())
        .collect();
    bases.sort();
    bases.dedup();
    assert_eq!(bases.len(), 3, "one set per issuer and plugin: {bases:?}");
    assert_eq!(
        bases.iter().filter(|k| k.starts_with("tef:other-plugin:jwks:")).count(),
        1
    );
}
