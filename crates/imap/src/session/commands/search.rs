//! SEARCH (RFC 3501 6.4.4) with ESEARCH, SEARCHRES and MODSEQ results.

use crate::session::*;

impl Session {
    pub(in crate::session) async fn search(
        &mut self,
        charset: Option<&Charset<'_>>,
        criteria: &[SearchKey<'_>],
        uid: bool,
    ) -> Done {
        // A RETURN clause we refuse is refused before any searching.
        if let Some(Err(crate::esearch::ReturnError::Unknown(option))) = &self.search_return {
            let text = format!("Unknown SEARCH RETURN option {option}");
            self.search_return = None;
            return bad(text);
        }
        if let Some(charset) = charset {
            let name = charset.as_ref();
            if !name.eq_ignore_ascii_case("UTF-8") && !name.eq_ignore_ascii_case("US-ASCII") {
                return no("[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
            }
        }
        let Some(selected) = &self.selected else {
            return bad("Select a mailbox first");
        };
        let (keys, content_keys) = criteria
            .iter()
            .map(search::key_counts)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        if keys > search::MAX_KEYS || content_keys > search::MAX_CONTENT_KEYS {
            return bad(format!(
                "At most {} search keys, {} of them on message content (BODY, TEXT, headers)",
                search::MAX_KEYS,
                search::MAX_CONTENT_KEYS
            ));
        }
        let wants_content = criteria.iter().any(search::needs_content);
        let uses_modseq = criteria.iter().any(uses_modseq);
        if uses_modseq {
            self.condstore = true;
        }
        let (max_seq, max_uid) = (selected.exists(), selected.max_uid());
        let prepared = search::Prepared::new(criteria, max_seq, max_uid);
        let mut found = Vec::new();
        let mut found_uids = Vec::new();
        let mut highest = 0;
        let mut start = 0;
        while start < selected.entries.len() {
            let rest = &selected.entries[start..];
            let batch = &rest[..batch_len(rest.iter().map(|e| if wants_content { e.size } else { 0 }))];
            let batch_start = start;
            start += batch.len();
            let contents: Vec<Option<Vec<u8>>> = if wants_content {
                let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
                let mut contents = Vec::with_capacity(batch.len());
                match self.ctx.store.read_messages(&ids).await {
                    Ok(results) => {
                        for result in results {
                            match result {
                                Ok(bytes) => contents.push(Some(bytes)),
                                // Expunged meanwhile: it matches nothing.
                                Err(StoreError::NotFound(_)) => contents.push(None),
                                Err(e) => return store_failure(&e),
                            }
                        }
                    }
                    Err(e) => return store_failure(&e),
                }
                contents
            } else {
                batch.iter().map(|_| None).collect()
            };
            for (offset, (entry, content)) in batch.iter().zip(&contents).enumerate() {
                if wants_content && content.is_none() {
                    continue;
                }
                let seq = (batch_start + offset) as u32 + 1;
                let candidate = Candidate {
                    seq,
                    entry,
                    content: content.as_deref(),
                    max_seq,
                    max_uid,
                    prepared: &prepared,
                    recent: selected.is_recent(entry.uid),
                };
                let mut parsed = None;
                if criteria
                    .iter()
                    .all(|key| search::matches(key, &candidate, &mut parsed))
                {
                    found.push(if uid { entry.uid } else { seq });
                    found_uids.push(entry.uid);
                    highest = highest.max(entry.modseq);
                }
            }
        }
        let options = match self.search_return.take() {
            Some(Ok(options)) => Some(options),
            Some(Err(crate::esearch::ReturnError::Unknown(option))) => {
                return bad(format!("Unknown SEARCH RETURN option {option}"));
            }
            // IMAP4rev2: every SEARCH answers with ESEARCH (RFC 9051 6.4.4).
            None if self.rev2 => Some(crate::esearch::ReturnOptions {
                all: true,
                ..crate::esearch::ReturnOptions::default()
            }),
            None => None,
        };
        if let Some(options) = options {
            found.sort_unstable();
            if options.save {
                // RFC 5182 2.1: with MIN or MAX alone, only those are saved.
                found_uids.sort_unstable();
                self.saved = if (options.min || options.max) && !options.all && !options.count {
                    let mut kept = Vec::new();
                    if let (true, Some(&min)) = (options.min, found_uids.first()) {
                        kept.push(min);
                    }
                    if let (true, Some(&max)) = (options.max, found_uids.last()) {
                        kept.push(max);
                    }
                    kept.dedup();
                    kept
                } else {
                    found_uids
                };
            }
            if !options.answers() {
                return ok("SEARCH completed, result saved");
            }
            let modseq = uses_modseq.then_some(highest);
            let line = crate::esearch::response(&self.current_tag, uid, options, &found, modseq);
            self.out.extend_from_slice(line.as_bytes());
            return ok("SEARCH completed");
        }
        let mut text = Text(&mut self.out);
        let _ = write!(text, "* SEARCH");
        for n in &found {
            let _ = write!(text, " {n}");
        }
        if uses_modseq && !found.is_empty() {
            let _ = write!(text, " (MODSEQ {highest})");
        }
        let _ = write!(text, "\r\n");
        ok("SEARCH completed")
    }
}

pub(in crate::session) fn uses_modseq(key: &SearchKey<'_>) -> bool {
    match key {
        SearchKey::ModSequence { .. } => true,
        SearchKey::And(keys) => keys.as_ref().iter().any(uses_modseq),
        SearchKey::Not(k) => uses_modseq(k),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        _ => false,
    }
}
