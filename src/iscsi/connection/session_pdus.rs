//! The session-level PDUs a connection answers itself: NOP-Out, Text (with long responses
//! sent in pieces), Logout, and the limit on response data.

use super::*;

impl<C: Clone + Debug> Connection<C> {
    pub(super) fn handle_nop_out(&mut self, h: NopOut, data: Vec<u8>) {
        // A ping from the initiator (ITT valid): echo the data, TTT reserved (RFC 7143 §11.19).
        let max = self.response_data_limit();
        let mut data = data;
        data.truncate(max);
        let stat_sn = self.next_stat_sn();
        let header = Header::NopIn(NopIn {
            lun: h.lun,
            itt: h.itt,
            ttt: RESERVED_TAG,
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
        });
        self.send(Pdu::with_data(header, data));
    }

    // ---------------------------------------------------------------- text and logout

    pub(super) fn handle_text(&mut self, h: TextRequest, data: Vec<u8>) {
        // Continuation of a long response: the initiator echoes our TTT with an empty request.
        if h.ttt != RESERVED_TAG {
            match self.pending_text.take() {
                Some(pending) if pending.ttt == h.ttt => {
                    self.send_text_piece(&h, pending.remaining);
                }
                _ => {
                    let pdu = Pdu::with_data(Header::TextRequest(h), data);
                    self.reject_pdu(reject_reason::INVALID_PDU_FIELD, &pdu);
                }
            }
            return;
        }
        self.pending_text = None;
        let pairs = match text::parse(&data) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("bad Text Request: {e}");
                let pdu = Pdu::with_data(Header::TextRequest(h), data);
                self.reject_pdu(reject_reason::PROTOCOL_ERROR, &pdu);
                return;
            }
        };
        let mut answer: Vec<text::KeyValue> = Vec::new();
        let negotiator = self
            .negotiator
            .get_or_insert_with(|| Negotiator::new(self.config.policy.clone()));
        negotiator.next_round();
        for (key, value) in &pairs {
            if key == "SendTargets" {
                answer.extend(self.send_targets(value));
                continue;
            }
            let negotiator = self.negotiator.as_mut().expect("created above");
            match negotiator.offer(key, value, KeyPhase::FullFeature, true) {
                Ok(KeyAnswer::Reply(kv)) => answer.push(kv),
                Ok(KeyAnswer::Accepted) => {
                    if key == "MaxRecvDataSegmentLength" {
                        self.params.initiator_max_recv_data_segment_length =
                            negotiator.params().initiator_max_recv_data_segment_length;
                    }
                }
                Ok(KeyAnswer::NotOperational) => {
                    answer.push((key.clone(), "NotUnderstood".to_string()))
                }
                Err(_) => answer.push((key.clone(), "Reject".to_string())),
            }
        }
        self.send_text_piece(&h, text::encode(&answer));
    }

    /// Sends up to one PDU's worth of a Text Response, keeping the rest for the next request.
    fn send_text_piece(&mut self, h: &TextRequest, mut body: Vec<u8>) {
        let max = self.response_data_limit();
        let (continue_flag, ttt) = if body.len() > max {
            let rest = body.split_off(max);
            let ttt = self.fresh_ttt();
            self.pending_text = Some(PendingText {
                ttt,
                remaining: rest,
            });
            (true, ttt)
        } else {
            (false, RESERVED_TAG)
        };
        let stat_sn = self.next_stat_sn();
        let header = Header::TextResponse(TextResponse {
            final_flag: !continue_flag,
            continue_flag,
            lun: h.lun,
            itt: h.itt,
            ttt,
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
        });
        self.send(Pdu::with_data(header, body));
    }

    /// SendTargets answer (RFC 7143 Appendix C): targets this initiator may see, each with the
    /// portals it is reachable at. In a normal session only the session's own target.
    pub(in crate::iscsi) fn send_targets(&self, value: &str) -> Vec<text::KeyValue> {
        let mut out = Vec::new();
        for (index, target) in self.config.targets.iter().enumerate() {
            let wanted = match value {
                "All" => self.discovery,
                "" => self.target == Some(index),
                name => name == target.name,
            };
            if !wanted || !target.allows(&self.initiator_name) {
                continue;
            }
            out.push(("TargetName".to_string(), target.name.clone()));
            for portal in &self.config.portals {
                let addr = if portal.ip().is_unspecified() {
                    match self.local_addr {
                        Some(local) => SocketAddr::new(local.ip(), portal.port()),
                        None => continue,
                    }
                } else {
                    *portal
                };
                let host = match addr {
                    SocketAddr::V4(v4) => v4.ip().to_string(),
                    SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
                };
                out.push((
                    "TargetAddress".to_string(),
                    format!("{host}:{},{}", addr.port(), self.config.portal_group_tag),
                ));
            }
        }
        out
    }

    pub(super) fn handle_logout(&mut self, h: LogoutRequest) {
        // Reasons: 0 close session, 1 close connection, 2 remove connection for recovery.
        // With one connection per session, 0 and 1 both end the session; 2 needs ERL 2.
        if h.reason == 2 {
            // Response 2: connection recovery is not supported.
            self.send_logout_response(h.itt, 2);
            return;
        }
        // Tasks still waiting for data or their turn are dropped; running ones finish first so
        // their responses precede the Logout Response.
        self.drop_waiting_commands();
        self.pending_logout = Some(h.itt);
        self.phase = Phase::Draining(CloseReason::Logout);
        self.maybe_finish_draining();
    }

    /// Drops every command not in the backend: held for a CmdSN gap, waiting for data or for its
    /// turn.
    pub(super) fn drop_waiting_commands(&mut self) {
        self.held.clear();
        let waiting: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|&(id, _)| self.tasks.state(id) != Some(TaskState::Running))
            .map(|(id, _)| id)
            .collect();
        for id in waiting {
            self.drop_task(id);
        }
    }

    pub(in crate::iscsi) fn maybe_finish_draining(&mut self) {
        let Phase::Draining(reason) = &self.phase else {
            return;
        };
        if !self.tasks.is_empty() {
            return;
        }
        let reason = reason.clone();
        if let Some(itt) = self.pending_logout.take() {
            self.send_logout_response(itt, 0);
        }
        self.close(reason);
    }

    /// Logout Response; Time2Wait/Time2Retain 0 since nothing is kept for recovery at ERL 0.
    fn send_logout_response(&mut self, itt: u32, response: u8) {
        let stat_sn = self.next_stat_sn();
        let header = Header::LogoutResponse(LogoutResponse {
            response,
            itt,
            stat_sn,
            exp_cmd_sn: self.exp_cmd_sn,
            max_cmd_sn: self.max_cmd_sn(),
            time2wait: 0,
            time2retain: 0,
        });
        self.send(Pdu::new(header));
    }

    // ---------------------------------------------------------------- helpers for login.rs

    /// Switches to full feature phase with the negotiated parameters.
    pub(in crate::iscsi) fn enter_full_feature(&mut self, params: SessionParams, exp_cmd_sn: u32) {
        self.params = params;
        self.exp_cmd_sn = exp_cmd_sn;
        self.phase = Phase::FullFeature;
    }

    /// Largest data segment of a response PDU (NOP-In, Text Response) the initiator can take.
    ///
    /// Over iSER the Linux and libiscsi initiators receive full-feature PDUs in 204-byte buffers,
    /// 128 bytes of data, whatever InitiatorRecvDataSegmentLength says (Linux
    /// drivers/infiniband/ulp/iser/iscsi_iser.c `iscsi_iser_set_param` ignores
    /// ISCSI_PARAM_MAX_RECV_DLENGTH).
    fn response_data_limit(&self) -> usize {
        if self.params.rdma_extensions {
            ISER_FULL_FEATURE_RESPONSE_DATA
        } else {
            self.params.initiator_max_recv_data_segment_length.max(512) as usize
        }
    }
}
