"""Recording stand-ins for Google's and Microsoft's token endpoints.

THESE ARE NOT GOOGLE OR MICROSOFT. They are small local HTTP servers. Each one
checks that a request has the wire format the providers' public documentation
specifies, and answers in the shape those pages show. Passing against them
shows the filter speaks the documented protocol. It does not show that Google
or Entra ID would accept a particular deployment's configuration.

- GoogleStandin serves two endpoints on one port:
    POST /v1/token                Security Token Service (STS) token exchange
    POST /v1/projects/-/serviceAccounts/{EMAIL}:generateAccessToken
                                  IAM Service Account Credentials
  Sources: https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token
  and https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateAccessToken
  (the same text as the discovery documents sts.v1.json and iamcredentials.v1.json).
- EntraStandin serves POST /{tenant}/oauth2/v2.0/token for the on-behalf-of
  (OBO) grant, with a shared secret or a certificate client assertion.
  Sources: https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-on-behalf-of-flow
  and https://learn.microsoft.com/en-us/entra/identity-platform/certificate-credentials

Each stand-in records every request in `.requests`: dicts with method, path,
query, headers (names lower-cased), content_type, body (text), and `form`
(form-encoded) or `json` (JSON). Whatever breaks the documented format goes
into `.errors` as "<endpoint>: <what>", and the stand-in answers with the
provider's documented error shape: `invalid_request` (400) for STS and Entra,
so the filter maps it to 502, and `INVALID_ARGUMENT` (400),
`UNAUTHENTICATED` (401) or `PERMISSION_DENIED` (403) for IAM. A test that
expects a clean run asserts `standin.errors == []`.

A subject token that is well formed but not acceptable (bad signature, wrong
issuer or audience, expired) is not a format error. It goes into `.rejected`
and is answered `invalid_grant` (400), the way the providers answer. The
on-demand failures (`fail_step`, `step_up_subjects`) also go into `.rejected`.

Tokens handed out are remembered in `.issued`: {token: {"sub": <subject's
sub>, ...}}. Each token also carries the sub, so a test can tell users'
tokens apart: Google tokens embed it base64url-encoded, and Entra tokens are
RS256 JWTs with a `sub` claim, verifiable against `.jwks`.

Only the standard library (served by tests/httpd.py), PyJWT and
cryptography (tests/requirements.txt: PyJWT[crypto]). Everything listens on
127.0.0.1.
"""

import base64
import binascii
import hashlib
import json
import re
import secrets
import threading
import time
import urllib.parse
import uuid

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from httpd import HttpServer  # tests/httpd.py

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION_JWT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
# Every subject_token_type the STS reference lists.
STS_SUBJECT_TYPES = {JWT_TYPE, ID_TOKEN_TYPE, ACCESS_TOKEN_TYPE, "urn:ietf:params:oauth:token-type:saml2",
                     "urn:ietf:params:aws:token-type:aws4_request"}
STS_FIELDS = ("grant_type", "audience", "scope", "requested_token_type", "subject_token", "subject_token_type",
              "options")
WORKLOAD_AUDIENCE = re.compile(r"//iam\.googleapis\.com/projects/[0-9]+/locations/global/"
                               r"workloadIdentityPools/[a-z0-9-]{4,32}/providers/[a-z0-9-]{4,32}")
WORKFORCE_AUDIENCE = re.compile(r"//iam\.googleapis\.com/locations/global/"
                                r"workforcePools/[a-z0-9-]{4,63}/providers/[a-z0-9-]{4,32}")
GOOGLE_DURATION = re.compile(r"([0-9]+)(\.[0-9]{1,9})?s")
GENERATE_PATH = re.compile(r"/v1/projects/([^/]+)/serviceAccounts/([^/:]+):generateAccessToken")
SA_NAME = re.compile(r"projects/-/serviceAccounts/[^/]+")
OBO_FIELDS = ("grant_type", "client_id", "client_secret", "client_assertion_type", "client_assertion", "assertion",
              "scope", "requested_token_use")
OIDC_SCOPES = {"openid", "profile", "email", "offline_access"}
SKEW = 60  # seconds of clock skew tolerated on a client assertion's times
SUBJECT_SKEW = 5  # ... and on the subject token's, which the tests make expire on purpose


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rfc3339_nanos(epoch_ns):
    """`2014-10-02T15:01:23.045123456Z`, the form IAM Credentials uses."""
    seconds, nanos = divmod(epoch_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


class _Reply(Exception):
    """Stops handling a request with this answer."""

    def __init__(self, status, body):
        super().__init__(status)
        self.status, self.body = status, body


class _Standin(HttpServer):
    """An HTTP server in a thread of the test process. Subclasses implement
    `route(req)`, which returns (status, JSON body)."""

    def __init__(self):
        self.requests, self.errors, self.rejected, self.issued = [], [], [], {}
        self._lock = threading.Lock()
        super().__init__(self._answer)

    def _answer(self, request):
        req = self._read(request)
        try:
            status, body = self.route(req)
        except _Reply as r:
            status, body = r.status, r.body
        except Exception as e:  # a bug in the stand-in must show up in the test, not hang it
            self._error(req["path"], f"stand-in crashed: {type(e).__name__}: {e}")
            status, body = 500, {"error": "server_error"}
        headers = {"content-type": "application/json; charset=utf-8", "cache-control": "no-store"}
        return status, headers, json.dumps(body).encode()

    # -- plumbing shared by the stand-ins --

    def _read(self, request):
        headers = {k.lower(): v for k, v in request.headers.items()}
        path, _, query = request.path.partition("?")
        req = {"method": request.method, "path": path, "query": query, "headers": headers,
               "content_type": headers.get("content-type", "").split(";")[0].strip().lower(),
               "body": request.body.decode("utf-8", errors="replace"), "form": None, "json": None}
        with self._lock:
            self.requests.append(req)
        return req

    def _error(self, endpoint, what):
        with self._lock:
            self.errors.append(f"{endpoint}: {what}")

    def _reject(self, endpoint, what):
        with self._lock:
            self.rejected.append(f"{endpoint}: {what}")

    def _form(self, req, problems):
        """The form fields as {name: value}. Repeats are an error (RFC 6749 §3.2)."""
        if req["content_type"] != "application/x-www-form-urlencoded":
            problems.append(f"content-type {req['headers'].get('content-type')!r}, "
                            "want application/x-www-form-urlencoded")
        try:
            pairs = urllib.parse.parse_qsl(req["body"], keep_blank_values=True, strict_parsing=bool(req["body"]))
        except ValueError as e:
            problems.append(f"body is not form-encoded: {e}")
            pairs = []
        form = {}
        for k, v in pairs:
            if k in form:
                problems.append(f"parameter {k!r} appears more than once")
            form[k] = v
        req["form"] = form
        return form

    @staticmethod
    def _only(f, allowed, schema, problems):
        """Every parameter in `f` is one of `allowed`."""
        problems.extend(f"parameter {k!r} is not {schema}" for k in f if k not in allowed)

    @staticmethod
    def _want(f, name, value, problems):
        """Parameter `name` is `value`."""
        if f.get(name) != value:
            problems.append(f"{name} {f.get(name)!r}, want {value}")

    @staticmethod
    def _common(req, problems):
        if req["method"] != "POST":
            problems.append(f"method {req['method']}, want POST")
        if req["query"]:
            problems.append(f"query string {req['query']!r}: the parameters belong in the body")

    @staticmethod
    def _scopes(value, problems, name="scope"):
        """Space-delimited scopes (RFC 6749 §3.3): no empty entries, no commas."""
        if value is None or value == "":
            problems.append(f"{name} is required")
            return []
        parts = value.split(" ")
        if any(p == "" for p in parts):
            problems.append(f"{name} {value!r} has empty entries (separate with single spaces)")
        if any("," in p for p in parts):
            problems.append(f"{name} {value!r} looks comma-separated; scopes are space-delimited")
        return [p for p in parts if p]

    @staticmethod
    def _verify_subject(jwks, token, issuer, audience, algorithms):
        """(claims, None), or (None, why) for a token the provider would refuse."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            return None, f"not a JWT: {e}"
        if not header.get("kid"):
            return None, "JWT header has no kid"
        if header.get("alg") not in algorithms:
            return None, f"JWT alg {header.get('alg')!r} not in {algorithms}"
        try:
            key = jwks.get_signing_key_from_jwt(token)
            claims = jwt.decode(token, key.key, algorithms=algorithms, audience=audience, issuer=issuer,
                                leeway=SUBJECT_SKEW, options={"require": ["iss", "sub", "aud", "exp", "iat"]})
        except (jwt.PyJWTError, jwt.PyJWKClientError) as e:
            return None, f"{type(e).__name__}: {e}"
        return claims, None


class GoogleStandin(_Standin):
    """Google STS (`POST /v1/token`) and IAM Credentials
    (`POST /v1/projects/-/serviceAccounts/{EMAIL}:generateAccessToken`) on one port.

    GoogleStandin(jwks_url, issuer, subject_audience, audience=None, scope=None,
                  service_account=None, iam_scope=None, user_project=None, max_lifetime=3600)

    - jwks_url, issuer, subject_audience: how to verify the subject token (the
      caller's JWT). For a workload pool, its `aud` must be one of the
      provider's allowed audiences; for a workforce pool, the client ID. A
      string, or a list of accepted values.
    - audience: if given, STS `audience` must equal it. It must always have
      the documented workload- or workforce-provider shape.
    - scope: if given, the STS `scope` must hold exactly these scopes
      (space-separated string).
    - service_account: if given, generateAccessToken for any other account is
      answered 403 PERMISSION_DENIED, and recorded as an error.
    - iam_scope: if given, generateAccessToken's `scope` list must hold exactly these.
    - user_project: if given, STS `options` must be {"userProject": user_project}
      (what a workforce pool without client authentication needs).
    - max_lifetime: generateAccessToken's largest allowed `lifetime`, in
      seconds (3600 by default; 43200 with the org-policy extension).

    Knobs you can change while it runs:
    - fail_step: None; "sts" → 400 invalid_grant; "sts_target" → 400
      invalid_target; "iam" → 403 PERMISSION_DENIED.
    - sts_expires_in (3599): the STS `expires_in`.

    `.issued[token]` = {"kind": "sts"|"iam", "sub", "exp" (epoch seconds),
    plus "audience"/"scope" for STS, "service_account"/"scope" for IAM}.
    """

    def __init__(self, jwks_url, issuer, subject_audience, audience=None, scope=None, service_account=None,
                 iam_scope=None, user_project=None, max_lifetime=3600):
        self._idp_keys = jwt.PyJWKClient(jwks_url, cache_keys=True)
        self.issuer, self.subject_audience = issuer, subject_audience
        self.audience, self.scope, self.service_account = audience, scope, service_account
        self.iam_scope, self.user_project, self.max_lifetime = iam_scope, user_project, max_lifetime
        self.fail_step = None
        self.sts_expires_in = 3599
        super().__init__()

    def route(self, req):
        if req["path"] == "/v1/token":
            return self._sts(req)
        if GENERATE_PATH.fullmatch(req["path"]):
            return self._generate(req)
        self._error(req["path"], "no such Google endpoint")
        raise _Reply(404, _google_error(404, "NOT_FOUND", f"Method not found: {req['path']}"))

    # -- STS --

    def _sts_fail(self, problems, req):
        for p in problems:
            self._error("sts", p)
        raise _Reply(400, {"error": "invalid_request", "error_description": "; ".join(problems)})

    def _sts_fields(self, req, problems):
        """The request fields under their snake_case names, from a form or a JSON body."""
        if req["content_type"] == "application/json":
            try:
                body = json.loads(req["body"])
            except ValueError as e:
                problems.append(f"body is not JSON: {e}")
                return {}
            req["json"] = body
            if not isinstance(body, dict):
                problems.append("JSON body is not an object")
                return {}
            camel = {"grantType": "grant_type", "audience": "audience", "scope": "scope",
                     "requestedTokenType": "requested_token_type", "subjectToken": "subject_token",
                     "subjectTokenType": "subject_token_type", "options": "options"}
            fields = {}
            for k, v in body.items():
                if k not in camel:
                    problems.append(f"unknown JSON field {k!r} (the REST reference names: {sorted(camel)})")
                    continue
                if not isinstance(v, str):
                    problems.append(f"{k} must be a string")
                fields[camel[k]] = v if isinstance(v, str) else json.dumps(v)
            return fields
        return self._form(req, problems)

    def _sts(self, req):
        problems = []
        self._common(req, problems)
        if "authorization" in req["headers"]:
            problems.append("Authorization header sent; the STS reference says not to send one")
        f = self._sts_fields(req, problems)
        self._only(f, STS_FIELDS, "in the STS request schema", problems)
        self._want(f, "grant_type", TOKEN_EXCHANGE, problems)
        aud = f.get("audience")
        if not aud:
            problems.append("audience is required when exchanging an external credential")
        elif not (WORKLOAD_AUDIENCE.fullmatch(aud) or WORKFORCE_AUDIENCE.fullmatch(aud)):
            problems.append(f"audience {aud!r} is neither //iam.googleapis.com/projects/<number>/locations/global/"
                            "workloadIdentityPools/<pool>/providers/<provider> nor //iam.googleapis.com/locations/"
                            "global/workforcePools/<pool>/providers/<provider>")
        elif self.audience and aud != self.audience:
            problems.append(f"audience {aud!r}, configured {self.audience!r}")
        scopes = self._scopes(f.get("scope"), problems)
        if self.scope and scopes and set(scopes) != set(self.scope.split()):
            problems.append(f"scope {f.get('scope')!r}, want {self.scope!r}")
        self._want(f, "requested_token_type", ACCESS_TOKEN_TYPE, problems)
        if not f.get("subject_token"):
            problems.append("subject_token is required")
        stt = f.get("subject_token_type")
        if stt not in STS_SUBJECT_TYPES:
            problems.append(f"subject_token_type {stt!r} is not one STS supports")
        elif stt not in (JWT_TYPE, ID_TOKEN_TYPE):
            problems.append(f"subject_token_type {stt!r} is for another kind of credential; an OIDC JWT "
                            f"takes {JWT_TYPE} or {ID_TOKEN_TYPE}")
        self._sts_options(f.get("options"), aud or "", problems)
        if problems:
            self._sts_fail(problems, req)

        claims, why = self._verify_subject(self._idp_keys, f["subject_token"], self.issuer, self.subject_audience,
                                           ["RS256", "ES256"])
        if claims is None or claims["exp"] - claims["iat"] >= 48 * 3600:
            why = why or "exp is 48 hours or more after iat"
            self._reject("sts", why)
            raise _Reply(400, {"error": "invalid_grant", "error_description": f"The subject token is invalid: {why}"})
        if self.fail_step == "sts":
            self._reject("sts", "fail_step=sts")
            raise _Reply(400, {"error": "invalid_grant",
                               "error_description": "Error connecting to the given credential's issuer."})
        if self.fail_step == "sts_target":
            self._reject("sts", "fail_step=sts_target")
            raise _Reply(400, {"error": "invalid_target", "error_description":
                               "The target service indicated by the \"audience\" parameters is invalid. This might "
                               "either be because the pool or provider is disabled or deleted or because it "
                               "doesn't exist."})
        token = f"ya29.d.{b64url(claims['sub'].encode())}.{secrets.token_urlsafe(32)}"
        with self._lock:
            self.issued[token] = {"kind": "sts", "sub": claims["sub"], "exp": time.time() + self.sts_expires_in,
                                  "audience": aud, "scope": f["scope"]}
        return 200, {"access_token": token, "issued_token_type": ACCESS_TOKEN_TYPE, "token_type": "Bearer",
                     "expires_in": self.sts_expires_in}

    def _sts_options(self, options, aud, problems):
        if options is None:
            if self.user_project:
                problems.append(f"options missing; want {{\"userProject\": {self.user_project!r}}}")
            return
        if len(options) > 4096:
            problems.append("options is longer than 4096 characters")
        try:
            opts = json.loads(options)
        except ValueError:
            problems.append(f"options {options[:80]!r} is not serialized JSON")
            return
        if not isinstance(opts, dict):
            problems.append("options is not a JSON object")
            return
        for k in opts:
            if k not in ("userProject", "accessBoundary"):
                problems.append(f"options has unknown key {k!r}")
        up = opts.get("userProject")
        if "userProject" in opts and (not isinstance(up, str) or not re.fullmatch(r"[a-z0-9-]{1,32}", up)):
            problems.append(f"options.userProject {up!r} is not a project number or ID of at most 32 characters")
        if self.user_project and up != self.user_project:
            problems.append(f"options.userProject {up!r}, want {self.user_project!r}")
        if "accessBoundary" in opts and WORKFORCE_AUDIENCE.fullmatch(aud):
            problems.append("options.accessBoundary: workforce pools do not support Credential Access Boundaries")

    # -- IAM Credentials --

    def _generate(self, req):
        problems = []
        self._common(req, problems)
        project, account = GENERATE_PATH.fullmatch(req["path"]).groups()
        account = urllib.parse.unquote(account)
        if project != "-":
            problems.append(f"project {project!r} in the name; the '-' wildcard is required")
        if not (re.fullmatch(r"[a-z0-9-]+@[a-z0-9-]+\.iam\.gserviceaccount\.com", account)
                or re.fullmatch(r"[0-9]+", account)):
            problems.append(f"{account!r} is neither a service account email nor a unique ID")
        auth = req["headers"].get("authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        issued = self.issued.get(bearer) if bearer else None
        if issued is None or issued["kind"] != "sts" or issued["exp"] < time.time():
            what = ("no bearer token" if bearer is None else "bearer token is not a live token this STS issued")
            self._error("iam", what)
            raise _Reply(401, _google_error(401, "UNAUTHENTICATED", (
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
                "other valid authentication credential. See "
                "https://developers.google.com/identity/sign-in/web/devconsole-project.")))
        if req["content_type"] != "application/json":
            problems.append(f"content-type {req['headers'].get('content-type')!r}, want application/json")
        charset = re.search(r"charset=([^;\s]+)", req["headers"].get("content-type", ""), re.I)
        if charset and charset.group(1).strip('"').lower() != "utf-8":
            problems.append(f"charset {charset.group(1)!r}; JSON is UTF-8")
        try:
            body = req["json"] = json.loads(req["body"])
        except ValueError as e:
            problems.append(f"body is not JSON: {e}")
            body = {}
        if not isinstance(body, dict):
            problems.append("JSON body is not an object")
            body = {}
        for k in body:
            if k not in ("scope", "lifetime", "delegates"):
                problems.append(f"Invalid JSON payload received. Unknown name {k!r}: Cannot find field.")
        scope = body.get("scope")
        if not isinstance(scope, list) or not scope or not all(isinstance(s, str) and s for s in scope):
            problems.append(f"scope {scope!r}: a list of at least one scope is required")
        elif self.iam_scope and set(scope) != set(self.iam_scope):
            problems.append(f"scope {scope!r}, want {self.iam_scope!r}")
        lifetime = 3600.0
        if "lifetime" in body:
            m = GOOGLE_DURATION.fullmatch(body["lifetime"]) if isinstance(body["lifetime"], str) else None
            if not m:
                problems.append(f"lifetime {body['lifetime']!r} is not a duration like \"3600s\"")
            else:
                lifetime = float(m.group(1) + (m.group(2) or ""))
                if not 0 < lifetime <= self.max_lifetime:
                    problems.append(f"lifetime {body['lifetime']!r} is outside (0, {self.max_lifetime}s]")
        delegates = body.get("delegates", [])
        if not isinstance(delegates, list) or not all(isinstance(d, str) and SA_NAME.fullmatch(d) for d in delegates):
            problems.append(f"delegates {delegates!r}: each must be projects/-/serviceAccounts/<email or id>")
        if problems:
            for p in problems:
                self._error("iam", p)
            raise _Reply(400, _google_error(400, "INVALID_ARGUMENT", "; ".join(problems)))

        denied = None
        if self.service_account and account != self.service_account:
            self._error("iam", f"service account {account!r}, configured {self.service_account!r}")
            denied = "wrong service account"
        elif self.fail_step == "iam":
            self._reject("iam", "fail_step=iam")
            denied = "fail_step"
        if denied:
            raise _Reply(403, _google_error(
                403, "PERMISSION_DENIED",
                "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
                [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "IAM_PERMISSION_DENIED",
                  "domain": "iam.googleapis.com", "metadata": {"permission": "iam.serviceAccounts.getAccessToken"}}]))
        now_ns = time.time_ns()
        expire_ns = now_ns + int(lifetime * 1_000_000_000)
        token = f"ya29.c.{b64url(issued['sub'].encode())}.{secrets.token_urlsafe(48)}"
        with self._lock:
            self.issued[token] = {"kind": "iam", "sub": issued["sub"], "exp": expire_ns / 1e9,
                                  "service_account": account, "scope": scope}
        return 200, {"accessToken": token, "expireTime": rfc3339_nanos(expire_ns)}


def _google_error(code, status, message, details=None):
    """The Google API error model (https://cloud.google.com/apis/design/errors)."""
    err = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return {"error": err}


class EntraStandin(_Standin):
    """Microsoft Entra ID on-behalf-of: `POST /{tenant}/oauth2/v2.0/token`.

    EntraStandin(jwks_url, issuer, client_id, client_secret=None, client_certificate=None,
                 assertion_audience=None, tenant=..., scope=None, token_url=None, unique_jti=False)

    - jwks_url, issuer: how to verify `assertion` (the caller's JWT).
    - assertion_audience: the `aud` the assertion must carry. The OBO page
      says it is the middle tier's own app (client_id), which is the default.
    - client_id: the middle tier's application ID.
    - client_secret and/or client_certificate (PEM, str or bytes): the
      credentials registered for it. With a secret, the request must carry
      client_secret in the body or HTTP Basic. With a certificate, it must
      carry a client_assertion JWT signed by the certificate's key.
    - tenant: the path segment (a GUID by default).
    - scope: if given, the requested scopes must be exactly these.
    - token_url: the `aud` a client assertion must carry. The default is this
      stand-in's own URL, http://127.0.0.1:<port>/<tenant>/oauth2/v2.0/token.
      Pass the URL the filter is configured with if that differs.
    - unique_jti: if true, a client assertion whose jti was seen before is an
      error. The page asks for a unique jti per assertion but does not say
      that Entra refuses a reused one, so this is off by default.

    Knobs you can change while it runs:
    - step_up_subjects: a set of `sub`s. An assertion for one of them is
      answered 400 interaction_required with a `claims` challenge
      (AADSTS50079), exactly as the OBO page shows. `.claims_challenge` is
      the string sent.
    - expires_in (3599), ext_expires_in (3599).

    The issued access token is an RS256 JWT (kid in the header, verifiable
    against `.jwks`) with iss https://login.microsoftonline.com/<tenant>/v2.0,
    aud = the scope's resource, sub = the user's sub, azp = client_id, scp,
    iat/nbf/exp. `.issued[token]` = {"sub", "scope", "client_auth": "secret"|"basic"|"certificate"}.
    """

    def __init__(self, jwks_url, issuer, client_id, client_secret=None, client_certificate=None,
                 assertion_audience=None, tenant="aaaabbbb-0000-cccc-1111-dddd2222eeee", scope=None, token_url=None,
                 unique_jti=False):
        self._idp_keys = jwt.PyJWKClient(jwks_url, cache_keys=True)
        self.issuer, self.client_id, self.client_secret = issuer, client_id, client_secret
        self.assertion_audience = assertion_audience or client_id
        self.tenant, self.scope = tenant, scope
        self.cert = None
        if client_certificate is not None:
            pem = client_certificate.encode() if isinstance(client_certificate, str) else client_certificate
            self.cert = x509.load_pem_x509_certificate(pem)
            der = self.cert.public_bytes(serialization.Encoding.DER)
            self.x5t = b64url(hashlib.sha1(der).digest())
            self.x5t_s256 = b64url(hashlib.sha256(der).digest())
        self.step_up_subjects = set()
        self.claims_challenge = json.dumps(
            {"access_token": {"polids": {"essential": True, "values": ["9ab03e19-ed42-4168-b6b7-7001fb3e933a"]}}},
            separators=(",", ":"))
        self.expires_in = self.ext_expires_in = 3599
        self.seen_jti, self.unique_jti = set(), unique_jti
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = secrets.token_urlsafe(8)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        self.jwks = {"keys": [{**jwk, "kid": self._kid, "use": "sig", "alg": "RS256"}]}
        super().__init__()
        self.path = f"/{tenant}/oauth2/v2.0/token"
        self.token_url = token_url or f"http://127.0.0.1:{self.port}{self.path}"

    def _aad_error(self, status, error, code, message, extra=None):
        trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
        body = {"error": error,
                "error_description": f"AADSTS{code}: {message}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}"
                                     f"\r\nTimestamp: {stamp}",
                "error_codes": [code], "timestamp": stamp, "trace_id": trace, "correlation_id": corr,
                "error_uri": f"https://login.microsoftonline.com/error?code={code}"}
        body.update(extra or {})
        raise _Reply(status, body)

    def route(self, req):
        problems = []
        if req["path"] != self.path:
            self._error("entra", f"path {req['path']!r}, want {self.path!r}")
            raise _Reply(404, {"error": "invalid_request", "error_description": "no such endpoint"})
        self._common(req, problems)
        f = self._form(req, problems)
        self._only(f, OBO_FIELDS, "part of the OBO request", problems)
        self._want(f, "grant_type", JWT_BEARER, problems)
        self._want(f, "requested_token_use", "on_behalf_of", problems)
        if not f.get("assertion"):
            problems.append("assertion is required")
        scopes = self._scopes(f.get("scope"), problems)
        resources = {s.rsplit("/", 1)[0] for s in scopes if s not in OIDC_SCOPES}
        if scopes and not resources:
            problems.append(f"scope {f.get('scope')!r} names no resource (e.g. api://<app>/.default)")
        if len(resources) > 1:
            problems.append(f"scope names more than one resource {sorted(resources)} (AADSTS28000)")
        if any("/" not in s for s in scopes if s not in OIDC_SCOPES):
            problems.append(f"scope {f.get('scope')!r}: each resource scope is <resource>/<permission>")
        if self.scope and scopes and set(scopes) != set(self.scope.split()):
            problems.append(f"scope {f.get('scope')!r}, want {self.scope!r}")
        client_auth = self._client_auth(req, f, problems)
        if problems:
            for p in problems:
                self._error("entra", p)
            self._aad_error(400, "invalid_request", 900144, "; ".join(problems))

        claims, why = self._verify_subject(self._idp_keys, f["assertion"], self.issuer, self.assertion_audience,
                                           ["RS256", "PS256", "ES256"])
        if claims is None:
            self._reject("entra", why)
            self._aad_error(400, "invalid_grant", 50013, f"Assertion failed signature validation. [{why}]")
        if claims["sub"] in self.step_up_subjects:
            self._reject("entra", f"step-up for {claims['sub']}")
            self._aad_error(
                400, "interaction_required", 50079,
                "Due to a configuration change made by your administrator, or because you moved to a new location, "
                f"you must enroll in multifactor authentication to access '{self.client_id}'.",
                {"claims": self.claims_challenge})
        granted = " ".join(s for s in scopes if s not in OIDC_SCOPES)
        now = int(time.time())
        token = jwt.encode(
            {"aud": resources.pop(), "iss": f"https://login.microsoftonline.com/{self.tenant}/v2.0", "iat": now,
             "nbf": now, "exp": now + self.expires_in, "sub": claims["sub"], "azp": self.client_id,
             "tid": self.tenant, "ver": "2.0", "uti": secrets.token_urlsafe(16),
             "scp": " ".join(s.rsplit("/", 1)[1] for s in granted.split())},
            self._key, algorithm="RS256", headers={"kid": self._kid, "typ": "JWT"})
        with self._lock:
            self.issued[token] = {"sub": claims["sub"], "scope": granted, "client_auth": client_auth}
        body = {"token_type": "Bearer", "scope": granted, "expires_in": self.expires_in,
                "ext_expires_in": self.ext_expires_in, "access_token": token}
        if "offline_access" in scopes:
            body["refresh_token"] = "0.A" + secrets.token_urlsafe(64)
        return 200, body

    def _client_auth(self, req, f, problems):
        """Checks the client's credentials; returns how it authenticated.
        Wrong credentials answer 401 invalid_client, as Entra does."""
        if f.get("client_id") != self.client_id:
            problems.append(f"client_id {f.get('client_id')!r}, want {self.client_id!r}")
        auth = req["headers"].get("authorization")
        methods = [m for m, present in (("secret", "client_secret" in f), ("basic", auth is not None),
                                        ("certificate", "client_assertion" in f or "client_assertion_type" in f))
                   if present]
        if len(methods) != 1:
            problems.append(f"client authentication: want exactly one method, got {methods or 'none'}")
            return None
        method = methods[0]
        if method == "certificate":
            return self._check_assertion(f, problems)
        if method == "basic":
            if not auth.lower().startswith("basic "):
                problems.append(f"Authorization scheme {auth.split(' ')[0]!r}; only Basic client credentials")
                return None
            try:
                user, _, secret = base64.b64decode(auth[6:].strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                problems.append("Authorization Basic value is not base64 of id:secret")
                return None
            # RFC 6749 §2.3.1: both halves are form-urlencoded before base64.
            user, secret = urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(secret)
            if user != self.client_id:
                problems.append(f"Basic client id {user!r}, want {self.client_id!r}")
        else:
            secret = f["client_secret"]
        if problems:
            return None
        if self.client_secret is None:
            self._error("entra", "client secret sent, but none is registered for this client")
            self._aad_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        if not secrets.compare_digest(secret, self.client_secret):
            self._error("entra", "client secret does not match the registered one")
            self._aad_error(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret "
                            f"being sent in the request is the client secret value, not the client secret ID, for "
                            f"a secret added to app '{self.client_id}'.")
        return method

    def _check_assertion(self, f, problems):
        self._want(f, "client_assertion_type", CLIENT_ASSERTION_JWT, problems)
        token = f.get("client_assertion")
        if not token:
            problems.append("client_assertion is required with client_assertion_type")
            return None
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            problems.append(f"client_assertion is not a JWT: {e}")
            return None
        alg = header.get("alg")
        if alg not in ("RS256", "PS256", "ES256"):
            problems.append(f"client_assertion alg {alg!r}; the certificate-credentials page says PS256 (RS256 earlier)")
        if "typ" in header and header["typ"] != "JWT":
            problems.append(f"client_assertion typ {header['typ']!r}, want JWT")
        if "x5t" not in header and "x5t#S256" not in header:
            problems.append("client_assertion header has neither x5t nor x5t#S256")
        now = time.time()
        for claim in ("aud", "iss", "sub", "jti", "exp", "nbf"):
            if claim not in claims:
                problems.append(f"client_assertion has no {claim!r} claim")
        if "aud" in claims and claims["aud"] != self.token_url:
            problems.append(f"client_assertion aud {claims['aud']!r}, want the token URL {self.token_url!r}")
        for claim in ("iss", "sub"):
            if claim in claims and claims[claim] != self.client_id:
                problems.append(f"client_assertion {claim} {claims[claim]!r}, want the client ID {self.client_id!r}")
        if "jti" in claims and (not isinstance(claims["jti"], str) or not claims["jti"]):
            problems.append("client_assertion jti is empty")
        for claim in ("exp", "nbf", "iat"):
            if claim in claims and not isinstance(claims[claim], (int, float)):
                problems.append(f"client_assertion {claim} is not a NumericDate")
        if problems:
            return None
        if claims["exp"] > now + 600 + SKEW:
            problems.append(f"client_assertion exp is {int(claims['exp'] - now)}s away; keep it within 10 minutes")
        if claims["jti"] in self.seen_jti and self.unique_jti:
            problems.append(f"client_assertion jti {claims['jti']!r} was used before")
        self.seen_jti.add(claims["jti"])
        if problems:
            return None
        # Wrong key or stale: Entra answers invalid_client, HTTP 401.
        if self.cert is None:
            self._error("entra", "client_assertion sent, but no certificate is registered for this client")
            self._aad_error(401, "invalid_client", 700027, "Client assertion failed signature validation.")
        if header.get("x5t", self.x5t) != self.x5t or header.get("x5t#S256", self.x5t_s256) != self.x5t_s256:
            self._error("entra", "client_assertion thumbprint does not match the registered certificate")
            self._aad_error(401, "invalid_client", 700027, "Client assertion contains an invalid signature. "
                            "[Reason - The key was not found.]")
        try:
            jwt.decode(token, self.cert.public_key(), algorithms=[alg], audience=self.token_url, leeway=SKEW,
                       options={"require": ["exp", "nbf"]})
        except jwt.ImmatureSignatureError as e:
            self._error("entra", f"client_assertion not yet valid: {e}")
            self._aad_error(401, "invalid_client", 700024, "Client assertion is not within its valid time range.")
        except jwt.ExpiredSignatureError as e:
            self._error("entra", f"client_assertion expired: {e}")
            self._aad_error(401, "invalid_client", 700024, "Client assertion is not within its valid time range.")
        except jwt.PyJWTError as e:
            self._error("entra", f"client_assertion signature: {type(e).__name__}: {e}")
            self._aad_error(401, "invalid_client", 700027, "Client assertion failed signature validation.")
        return "certificate"


def make_client_certificate(common_name="token-exchange-filter test client", key_type="rsa"):
    """A self-signed certificate for EntraStandin(client_certificate=...):
    returns (private key PEM, certificate PEM), both str."""
    import datetime

    key = ec.generate_private_key(ec.SECP256R1()) if key_type == "ec" else rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


def make_client_assertion(key_pem, cert_pem, client_id, token_url, alg="PS256", thumbprint="x5t#S256",
                          lifetime=300, **overrides):
    """A client assertion as the certificate-credentials page describes it.
    For calling EntraStandin directly. `overrides` replace or add claims
    (None deletes one)."""
    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der) if thumbprint == "x5t#S256" else hashlib.sha1(der)
    now = int(time.time())
    claims = {"aud": token_url, "iss": client_id, "sub": client_id, "jti": str(uuid.uuid4()), "nbf": now,
              "iat": now, "exp": now + lifetime}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    return jwt.encode(claims, key, algorithm=alg, headers={"typ": "JWT", thumbprint: b64url(digest.digest())})
