//! The login phase (RFC 7143 §6): stages, T/C bits, session identity, authentication, key
//! negotiation and login status on failure.
//!
//! Authentication: a target (or initiator entry) with CHAP credentials offers `AuthMethod=CHAP`
//! only and keeps the login in the security stage (answering T=0) until the exchange in
//! [`super::chap`] succeeds; every other login settles `AuthMethod=None`, or skips the security
//! stage altogether.

use std::fmt::Debug;

use super::chap::{Authentication, ChapError, ChapExchange, ChapKeys};
use super::connection::{
    Action, BindRequest, CloseReason, Connection, CoreConfig, LoginRefusal, LoginStatus, Phase,
};
use super::pdu::{Header, LoginRequest, LoginResponse, Pdu, Stage};
use super::text::{self, KeyAnswer, KeyPhase, KeyValue, Negotiator};

/// Login progress of one connection.
#[derive(Debug)]
pub(crate) struct LoginState {
    negotiator: Negotiator,
    /// No Login Request seen yet.
    first: bool,
    stage: Stage,
    isid: [u8; 6],
    tsih: u16,
    itt: u32,
    cmd_sn: u32,
    initiator_name: Option<String>,
    discovery: bool,
    target: Option<usize>,
    /// Text of a request split over several PDUs (C bit).
    partial: Vec<u8>,
    /// The Login Response to send once the session is bound.
    final_response: Option<(LoginResponse, Vec<KeyValue>)>,
    /// The credentials this login must prove, known once the initiator and target are.
    required_auth: Option<Authentication>,
    auth: AuthProgress,
}

/// How far authentication has come.
#[derive(Debug)]
enum AuthProgress {
    /// No AuthMethod settled yet.
    Pending,
    /// AuthMethod=None settled.
    NotRequired,
    /// AuthMethod=CHAP settled; the exchange is under way or done.
    Chap(ChapExchange),
}

impl AuthProgress {
    fn authenticated(&self) -> bool {
        matches!(self, AuthProgress::Chap(exchange) if exchange.is_authenticated())
    }
}

impl LoginState {
    /// A Login Response to the current request: same stage, no transit, the given status, and
    /// MaxCmdSN = CmdSN + `window`.
    fn response(&self, window: u32, status: LoginStatus) -> LoginResponse {
        LoginResponse {
            transit: false,
            continue_flag: false,
            current_stage: self.stage,
            next_stage: self.stage,
            version_max: 0,
            version_active: 0,
            isid: self.isid,
            tsih: 0,
            itt: self.itt,
            stat_sn: 0,
            exp_cmd_sn: self.cmd_sn,
            max_cmd_sn: self.cmd_sn.wrapping_add(window),
            status_class: status.class,
            status_detail: status.detail,
        }
    }

    pub(crate) fn new(config: &CoreConfig) -> Self {
        LoginState {
            negotiator: Negotiator::new(config.policy.clone()),
            first: true,
            stage: Stage::Security,
            isid: [0; 6],
            tsih: 0,
            itt: 0,
            cmd_sn: 0,
            initiator_name: None,
            discovery: false,
            target: None,
            partial: Vec::new(),
            final_response: None,
            required_auth: None,
            auth: AuthProgress::Pending,
        }
    }
}

/// What processing one login request decided.
enum Outcome {
    /// Send this response (more login PDUs follow).
    Respond(LoginResponse, Vec<KeyValue>),
    /// Login complete pending session binding.
    Bind(LoginResponse, Vec<KeyValue>),
    /// Refuse the login with this status, for this reason (in words, for the log).
    Fail(LoginStatus, String),
}

impl<C: Clone + Debug> Connection<C> {
    pub(super) fn handle_login_pdu(&mut self, pdu: Pdu) {
        let Phase::Login(mut state) = std::mem::replace(&mut self.phase, Phase::Closed) else {
            unreachable!("called in the login phase only");
        };
        let Header::LoginRequest(req) = pdu.header else {
            // Anything but a Login Request before login completes: RFC 7143 §6.1 says the target
            // must not answer, so close without a word.
            self.phase = Phase::Login(state);
            self.close(CloseReason::ProtocolError(format!(
                "{:?} PDU before login completed",
                pdu.header.opcode()
            )));
            return;
        };
        let outcome = self.login_step(&mut state, &req, pdu.data);
        match outcome {
            Outcome::Respond(resp, keys) => {
                self.send_login_response(resp, &keys);
                self.phase = Phase::Login(state);
            }
            Outcome::Bind(resp, keys) => {
                let request = BindRequest {
                    initiator_name: state.initiator_name.clone().unwrap_or_default(),
                    isid: state.isid,
                    tsih: state.tsih,
                    target: state.target,
                };
                state.final_response = Some((resp, keys));
                self.phase = Phase::Binding(state);
                self.actions.push_back(Action::BindSession(request));
            }
            Outcome::Fail(status, why) => self.fail_login(&state, status, why),
        }
    }

    /// Processes one Login Request.
    fn login_step(&mut self, state: &mut LoginState, req: &LoginRequest, data: Vec<u8>) -> Outcome {
        // A failure response echoes these whatever went wrong.
        state.itt = req.itt;
        state.cmd_sn = req.cmd_sn;
        if state.first {
            state.isid = req.isid;
            if req.version_min > 0 {
                return Outcome::Fail(
                    LoginStatus::UNSUPPORTED_VERSION,
                    format!("iSCSI version {} and up asked for", req.version_min),
                );
            }
            state.first = false;
            state.tsih = req.tsih;
            state.stage = req.current_stage;
            // The first response starts this connection's StatSN where the initiator expects it.
            self.stat_sn = req.exp_stat_sn;
        } else if req.isid != state.isid || req.tsih != state.tsih {
            return Outcome::Fail(
                LoginStatus::INITIATOR_ERROR,
                "ISID or TSIH changed during the login".into(),
            );
        }
        if req.current_stage != state.stage || req.current_stage == Stage::FullFeature {
            return Outcome::Fail(
                LoginStatus::INITIATOR_ERROR,
                format!(
                    "a request in stage {:?} during {:?}",
                    req.current_stage, state.stage
                ),
            );
        }
        let window = self.config.queue_depth.max(1) - 1;
        let mut response = state.response(
            window,
            LoginStatus {
                class: 0,
                detail: 0,
            },
        );
        state.partial.extend_from_slice(&data);
        if req.continue_flag {
            // More text follows in the next Login Request: acknowledge with an empty response.
            if state.partial.len() > 64 * 1024 {
                return Outcome::Fail(
                    LoginStatus::OUT_OF_RESOURCES,
                    "login text over 64 KiB".into(),
                );
            }
            return Outcome::Respond(response, Vec::new());
        }
        let text = std::mem::take(&mut state.partial);
        let pairs = match text::parse(&text) {
            Ok(pairs) => pairs,
            Err(e) => {
                return Outcome::Fail(LoginStatus::INITIATOR_ERROR, format!("login text: {e}"))
            }
        };
        let was_initial = self.initiator_name.is_empty() && state.initiator_name.is_none();
        let phase = if state.stage == Stage::Security {
            KeyPhase::Security
        } else {
            KeyPhase::Operational
        };
        state.negotiator.next_round();
        let mut answer = Vec::new();
        let mut failure = None;
        let mut auth_offer = None;
        let mut chap_keys = ChapKeys::default();
        for (key, value) in &pairs {
            match key.as_str() {
                "InitiatorName" => {
                    if value.is_empty() {
                        failure.get_or_insert_with(|| {
                            (LoginStatus::INITIATOR_ERROR, "empty InitiatorName".into())
                        });
                    }
                    state.initiator_name = Some(value.clone());
                }
                "InitiatorAlias" => {}
                "SessionType" => match value.as_str() {
                    "Discovery" => state.discovery = true,
                    "Normal" => state.discovery = false,
                    _ => {
                        failure.get_or_insert_with(|| {
                            (
                                LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
                                format!("SessionType={value}"),
                            )
                        });
                    }
                },
                "TargetName" => {
                    state.target = self
                        .config
                        .targets
                        .iter()
                        .position(|t| t.name.eq_ignore_ascii_case(value));
                    if state.target.is_none() {
                        failure.get_or_insert_with(|| {
                            (LoginStatus::NOT_FOUND, format!("no target named {value}"))
                        });
                    }
                }
                "AuthMethod" => {
                    if phase != KeyPhase::Security || auth_offer.replace(value.clone()).is_some() {
                        failure.get_or_insert_with(|| {
                            (
                                LoginStatus::INITIATOR_ERROR,
                                "AuthMethod twice or outside the security stage".into(),
                            )
                        });
                    }
                }
                k if k.starts_with("CHAP_") => {
                    if phase != KeyPhase::Security {
                        failure.get_or_insert_with(|| {
                            (
                                LoginStatus::AUTHENTICATION_FAILED,
                                format!("{k} outside the security stage"),
                            )
                        });
                    } else if let Err(e) = chap_keys.take(k, value) {
                        failure.get_or_insert_with(|| {
                            (LoginStatus::AUTHENTICATION_FAILED, format!("CHAP: {e}"))
                        });
                    }
                }
                // Keys only a target may send.
                "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => {
                    failure.get_or_insert_with(|| {
                        (
                            LoginStatus::INITIATOR_ERROR,
                            format!("{key} sent to a target"),
                        )
                    });
                }
                _ => match state.negotiator.offer(key, value, phase, state.tsih == 0) {
                    Ok(KeyAnswer::Reply(kv)) => answer.push(kv),
                    Ok(KeyAnswer::Accepted) => {}
                    Ok(KeyAnswer::NotOperational) => {
                        answer.push((key.clone(), "NotUnderstood".to_string()))
                    }
                    Err(e) => {
                        failure.get_or_insert_with(|| {
                            (LoginStatus::INITIATOR_ERROR, format!("login key: {e}"))
                        });
                    }
                },
            }
        }
        if let Some((status, why)) = failure {
            return Outcome::Fail(status, why);
        }
        if was_initial {
            // The leading Login Request must name the initiator and, for a normal session, the
            // target; the first response carries TargetPortalGroupTag (RFC 7143 §13.9).
            let Some(initiator) = state.initiator_name.clone() else {
                return Outcome::Fail(
                    LoginStatus::MISSING_PARAMETER,
                    "no InitiatorName in the first request".into(),
                );
            };
            if !state.discovery {
                let Some(target) = state.target else {
                    return Outcome::Fail(
                        LoginStatus::MISSING_PARAMETER,
                        "no TargetName for a normal session".into(),
                    );
                };
                if !self.config.targets[target].allows(&initiator) {
                    return Outcome::Fail(
                        LoginStatus::AUTHORIZATION_FAILED,
                        format!(
                            "not allowed on {} (allowed_initiators)",
                            self.config.targets[target].name
                        ),
                    );
                }
            }
            state.required_auth = if state.discovery {
                self.config.discovery_auth.clone()
            } else {
                state
                    .target
                    .and_then(|t| self.config.targets[t].authentication_for(&initiator))
                    .cloned()
            };
            self.initiator_name = initiator;
            answer.push((
                "TargetPortalGroupTag".to_string(),
                self.config.portal_group_tag.to_string(),
            ));
        }
        if let Err((status, why)) = self.authenticate(state, auth_offer, chap_keys, &mut answer) {
            return Outcome::Fail(status, why);
        }
        if state.required_auth.is_some() && !state.auth.authenticated() {
            if state.stage != Stage::Security {
                // libiscsi without credentials skips the security stage: its first Login Request
                // already has CSG=1 (lib/login.c, iscsi_login_add_* with no user set). tgt answers
                // that with an authentication failure, and so do we.
                return Outcome::Fail(
                    LoginStatus::AUTHENTICATION_FAILED,
                    "skips the CHAP authentication it needs".into(),
                );
            }
            if req.transit {
                if matches!(state.auth, AuthProgress::Pending) {
                    return Outcome::Fail(
                        LoginStatus::AUTHENTICATION_FAILED,
                        "leaves the security stage without authenticating".into(),
                    );
                }
                // CHAP is under way: stay in the security stage with a partial response (T=0,
                // "more negotiation needed", RFC 7143 §11.13). libiscsi asks to transit in its
                // first request already (lib/login.c, ISCSI_LOGIN_SECNEG_PHASE_OFFER_CHAP).
                return Outcome::Respond(response, answer);
            }
        }
        if !req.transit {
            return Outcome::Respond(response, answer);
        }
        if req.next_stage <= state.stage {
            return Outcome::Fail(
                LoginStatus::INITIATOR_ERROR,
                format!("a transit from {:?} to {:?}", state.stage, req.next_stage),
            );
        }
        response.transit = true;
        response.next_stage = req.next_stage;
        if req.next_stage == Stage::FullFeature {
            // A response in the security stage carries security keys only, even the final one:
            // open-iscsi's discovery goes from security straight to full feature
            // (usr/login.c fill_security_params_text) and fails the login on any other key there
            // ("can't accept ... in security stage", get_auth_key_type). Undeclared, our
            // MaxRecvDataSegmentLength stays the RFC default the negotiator starts from.
            if state.stage == Stage::Operational {
                answer.extend(state.negotiator.declarations());
            }
            return Outcome::Bind(response, answer);
        }
        state.stage = req.next_stage;
        Outcome::Respond(response, answer)
    }

    /// Settles AuthMethod and runs the CHAP exchange for one request's keys, appending the answer.
    fn authenticate(
        &self,
        state: &mut LoginState,
        offer: Option<String>,
        keys: ChapKeys,
        answer: &mut Vec<KeyValue>,
    ) -> Result<(), (LoginStatus, String)> {
        if let Some(offer) = offer {
            if !matches!(state.auth, AuthProgress::Pending) {
                return Err((
                    LoginStatus::INITIATOR_ERROR,
                    "AuthMethod offered again after it was settled".into(),
                ));
            }
            let offers = |method: &str| offer.split(',').any(|m| m == method);
            let choice = match &state.required_auth {
                Some(auth) if offers("CHAP") => {
                    state.auth = AuthProgress::Chap(ChapExchange::new(auth.clone()));
                    "CHAP"
                }
                Some(_) => {
                    return Err((
                        LoginStatus::AUTHENTICATION_FAILED,
                        format!("offers AuthMethod={offer} but CHAP is required"),
                    ));
                }
                None if offers("None") => {
                    state.auth = AuthProgress::NotRequired;
                    "None"
                }
                None => {
                    return Err((
                        LoginStatus::AUTHENTICATION_FAILED,
                        format!("offers AuthMethod={offer}; no credentials are configured for it"),
                    ));
                }
            };
            answer.push(("AuthMethod".to_string(), choice.to_string()));
        }
        match &mut state.auth {
            AuthProgress::Chap(exchange) => match exchange.step(keys, self.config.random) {
                Ok(keys) => answer.extend(keys),
                Err(e) => {
                    let status = match e {
                        ChapError::Random(_) => LoginStatus::TARGET_ERROR,
                        _ => LoginStatus::AUTHENTICATION_FAILED,
                    };
                    return Err((status, format!("CHAP: {e}")));
                }
            },
            _ if !keys.is_empty() => {
                return Err((
                    LoginStatus::AUTHENTICATION_FAILED,
                    "CHAP keys without AuthMethod=CHAP".into(),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    fn send_login_response(&mut self, mut response: LoginResponse, keys: &[KeyValue]) {
        response.stat_sn = self.next_stat_sn_for_login();
        let pdu = Pdu::with_data(Header::LoginResponse(response), text::encode(keys));
        self.send(pdu);
    }

    /// Refuses the login with `status`; the transport logs the refusal with `why`.
    fn fail_login(&mut self, state: &LoginState, status: LoginStatus, why: String) {
        // The connection ends, so the window does not matter: ExpCmdSN = MaxCmdSN = CmdSN.
        self.send_login_response(state.response(0, status), &[]);
        self.close(CloseReason::LoginFailed(LoginRefusal {
            status,
            initiator: state.initiator_name.clone(),
            target: state
                .target
                .filter(|_| !state.discovery)
                .map(|t| self.config.targets[t].name.clone()),
            discovery: state.discovery,
            why,
        }));
    }

    /// Sends the final Login Response (or the failure) once the session is bound.
    pub(super) fn finish_login(&mut self, mut state: LoginState, result: Result<u16, LoginStatus>) {
        let (mut response, keys) = state
            .final_response
            .take()
            .expect("binding follows a final login request");
        match result {
            Ok(tsih) => {
                self.tsih = tsih;
                self.target = state.target;
                self.discovery = state.discovery;
                response.tsih = tsih;
                let params = state.negotiator.params().clone();
                self.enter_full_feature(params, state.cmd_sn);
                self.negotiator = Some(state.negotiator);
                self.send_login_response(response, &keys);
                self.actions
                    .push_back(Action::SetFrameSettings(self.frame_settings()));
                log::info!(
                    "{} session {:#06x} of {} started",
                    if self.discovery {
                        "discovery"
                    } else {
                        "normal"
                    },
                    tsih,
                    self.initiator_name
                );
            }
            // The server said why when it refused to bind the session.
            Err(status) => self.fail_login(&state, status, String::new()),
        }
    }
}
