use super::*;

#[test]
fn thread_contexts_stay_with_their_threads_through_cache_collisions_and_forgetting() {
    let mut t = Threads::default();
    // Thread ids that share cache slots (equal modulo THREAD_CACHE) and ones that
    // do not; each thread is last seen at its own time, which marks its context.
    let tids: Vec<u32> = (0..40u32)
        .map(|i| 1000 + (i % 5) * THREAD_CACHE as u32 + i / 5)
        .collect();
    let seen = |n: usize| 10 + n as u64;
    for (n, &tid) in tids.iter().enumerate() {
        t.at(tid, seen(n));
    }
    for (n, &tid) in tids.iter().enumerate().rev() {
        assert_eq!(t.get(tid).map(|c| c.seen), Some(seen(n)));
    }
    // The first ten were last seen before 20: forgotten, and the others, moved
    // into their slots, are still found as themselves.
    t.forget_idle(20);
    assert_eq!(t.len(), 30);
    for (n, &tid) in tids.iter().enumerate() {
        let found = t.get(tid).map(|c| c.seen);
        assert_eq!(found, (n >= 10).then_some(seen(n)), "thread {tid}");
    }
    // A forgotten thread seen again starts afresh.
    assert!(t.at(tids[0], 100).pending_co.is_none());
    assert_eq!(t.get(tids[0]).map(|c| c.seen), Some(100));
    assert_eq!(t.get_mut(tids[39]).map(|c| c.seen), Some(seen(39)));
}

fn r(idx: u32) -> Ref {
    Ref::new(idx, 1)
}

#[test]
fn thread_contexts_survive_forgetting_others() {
    let mut t = Threads::default();
    for tid in 1..=5u32 {
        t.at(tid, tid as u64 * 100).worker = Some(r(tid));
    }
    // Threads 1 and 2 idle since before 250: forgotten; 3..=5 keep their state
    // under their own ids although their slots moved.
    t.forget_idle(250);
    assert_eq!(t.len(), 3);
    assert!(t.get(1).is_none() && t.get(2).is_none());
    for tid in 3..=5u32 {
        assert_eq!(t.get(tid).and_then(|c| c.worker), Some(r(tid)), "tid {tid}");
    }
    // A forgotten thread starts over empty.
    assert!(t.at(1, 600).worker.is_none());
    assert_eq!(t.get(5).and_then(|c| c.worker), Some(r(5)));
    // The remembered last lookup does not leak one thread's state to another.
    t.get_mut(4).expect("kept").worker = None;
    assert_eq!(t.get(3).and_then(|c| c.worker), Some(r(3)));
    assert!(t.get(4).and_then(|c| c.worker).is_none());
}
