// End-to-end encryption between independent matrix-js-sdk clients, each with
// its own Rust crypto stack (initRustCrypto, in memory): the homeserver only
// relays keys and ciphertext, and every check here is something a real client
// needs from it.
//
// alice has two devices (phone, laptop) and bob one (phone). alice
// bootstraps cross-signing (UIA with her password), secret storage and a key
// backup, then cross-signs her laptop. In an encrypted room every device sends
// and every device decrypts everything. bob then signs in on a second device:
// the others learn of it through /sync device_lists and it decrypts what is
// sent after it arrived. Finally alice signs in on a brand new device, takes
// the cross-signing keys and the backup key out of secret storage with her
// recovery key, restores the key backup and decrypts the old messages. Last,
// bob verifies alice interactively (SAS over to-device messages) and signs her
// identity.
//
// Input: one JSON argument {baseUrl, password, alice, bob, timeoutMs} (alice
// and bob are localparts of existing accounts). Output: one line on stdout,
// "RESULT <json>", for tests/e2e/test_jssdk_e2ee.py to check; the SDK's own
// logging goes to stderr. On failure the RESULT carries `error` and the step.

import * as sdk from "matrix-js-sdk";
import { CryptoEvent, VerificationPhase, VerifierEvent } from "matrix-js-sdk/lib/crypto-api/index.js";
import { logger } from "matrix-js-sdk/lib/logger.js";

const input = JSON.parse(process.argv[2]);
logger.setLevel("warn");
// Keep stdout for the result alone.
console.log = console.info = console.debug = (...args) => console.error(...args);

const deadline = Date.now() + input.timeoutMs;
const result = { step: null, httpErrors: [], timings: {}, requests: {} };
// The recovery key per user, as the person would type it in.
const recoveryKeys = new Map();

function step(name) {
    result.step = name;
    result.timings[name] = Date.now();
    console.error(`=== ${name}`);
}

/** Poll `check` (which may be async) until it returns something truthy. */
async function waitFor(what, check, intervalMs = 50) {
    for (;;) {
        const value = await check();
        if (value) return value;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
}

// Devices whose sync loop is on hold: label -> {promise, release}.
const held = new Map();

function hold(label) {
    let release;
    const promise = new Promise((resolve) => (release = resolve));
    held.set(label, { promise, release });
}

function letGo(label) {
    held.get(label)?.release();
    held.delete(label);
}

/** fetch, counting requests per endpoint and recording every refused one. */
function recordingFetch(label) {
    return async (url, init) => {
        const endpoint = `${init?.method ?? "GET"} ${new URL(url).pathname.replace(/^\/_matrix\/client\/v3/, "")}`;
        const counts = (result.requests[label] ??= {});
        counts[endpoint] = (counts[endpoint] ?? 0) + 1;
        const response = await fetch(url, init);
        // A held device's SDK sees no /sync answer until let go.
        if (endpoint === "GET /sync") await held.get(label)?.promise;
        if (response.status >= 400) {
            const body = await response.clone().text();
            result.httpErrors.push({
                device: label,
                method: init?.method ?? "GET",
                path: new URL(url).pathname,
                status: response.status,
                body: body.slice(0, 500),
            });
        }
        return response;
    };
}

/** The UIA callback for uploading cross-signing keys: password auth when asked. */
function passwordAuth(device, user) {
    return async (makeRequest) => {
        try {
            await makeRequest(null);
            device.uia = "not required";
        } catch (err) {
            if (err.httpStatus !== 401 || !err.data?.session) throw err;
            device.uia = { flows: err.data.flows };
            await makeRequest({
                type: "m.login.password",
                identifier: { type: "m.id.user", user },
                password: input.password,
                session: err.data.session,
            });
        }
    };
}

async function signIn(user, label, initialSyncLimit = 20) {
    const anonymous = sdk.createClient({ baseUrl: input.baseUrl, fetchFn: recordingFetch(label) });
    const login = await anonymous.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user },
        password: input.password,
        initial_device_display_name: label,
    });
    const client = sdk.createClient({
        baseUrl: input.baseUrl,
        accessToken: login.access_token,
        userId: login.user_id,
        deviceId: login.device_id,
        fetchFn: recordingFetch(label),
        cryptoCallbacks: {
            getSecretStorageKey: async ({ keys }) => {
                const key = recoveryKeys.get(login.user_id);
                const keyId = Object.keys(keys)[0];
                return key && keyId ? [keyId, key.privateKey] : null;
            },
        },
    });
    await client.initRustCrypto({ useIndexedDB: false });
    const device = { label, client, crypto: client.getCrypto(), userId: login.user_id, deviceId: login.device_id };
    device.backupRemaining = null;
    client.on(CryptoEvent.KeyBackupSessionsRemaining, (n) => (device.backupRemaining = n));
    await client.startClient({ initialSyncLimit, lazyLoadMembers: false });
    await waitFor(`${label}'s first sync`, () => client.isInitialSyncComplete());
    return device;
}

/** The room's messages as `device` sees them: decrypted body or the failure. */
function messages(device, roomId) {
    const room = device.client.getRoom(roomId);
    if (!room) return [];
    return room
        .getLiveTimeline()
        .getEvents()
        .filter((e) => e.getWireType() === "m.room.encrypted" && e.getId()?.startsWith("$"))
        .map((e) => ({
            id: e.getId(),
            sender: e.getSender(),
            sessionId: e.getWireContent().session_id,
            body: e.isDecryptionFailure() ? null : (e.getClearContent()?.body ?? null),
            failure: e.isDecryptionFailure() ? String(e.decryptionFailureReason) : null,
        }));
}

/** Wait until `device` has decrypted every event in `ids`; return their bodies by id. */
async function decrypted(device, roomId, ids) {
    return waitFor(`${device.label} decrypting ${ids.length} messages`, () => {
        const seen = new Map(messages(device, roomId).map((m) => [m.id, m.body]));
        return ids.every((id) => seen.get(id)) ? Object.fromEntries(ids.map((id) => [id, seen.get(id)])) : null;
    });
}

async function knowsDevice(viewer, userId, deviceId) {
    const devices = await viewer.crypto.getUserDeviceInfo([userId]);
    return devices.get(userId)?.has(deviceId) ?? false;
}

async function trust(viewer, userId, deviceId) {
    const status = await viewer.crypto.getDeviceVerificationStatus(userId, deviceId);
    return status && {
        signedByOwner: status.signedByOwner,
        crossSigningVerified: status.crossSigningVerified,
        verified: status.isVerified(),
    };
}

/** What a /sync of its own tells `device` about its one-time and fallback keys. */
let rawSyncs = 0;
async function rawSync(device) {
    // A different filter each time: Synapse caches answers to identical requests.
    const room = { rooms: [], timeline: { limit: ++rawSyncs } };
    const filter = JSON.stringify({ room, presence: { types: [] }, account_data: { types: [] } });
    // Plain fetch: neither the SDK nor the hold sees this one.
    const url = `${input.baseUrl}/_matrix/client/v3/sync?timeout=0&filter=${encodeURIComponent(filter)}`;
    const response = await fetch(url, { headers: { Authorization: `Bearer ${device.client.getAccessToken()}` } });
    if (response.status !== 200) {
        throw new Error(`/sync for ${device.label}: ${response.status} ${await response.text()}`);
    }
    const sync = await response.json();
    return {
        oneTimeKeys: sync.device_one_time_keys_count,
        unusedFallbackKeyTypes: sync.device_unused_fallback_key_types,
    };
}

async function send(device, roomId, body) {
    const { event_id: eventId } = await device.client.sendTextMessage(roomId, body);
    return eventId;
}

const devices = [];
try {
    step("sign in");
    const alice1 = await signIn(input.alice, "alice phone");
    const alice2 = await signIn(input.alice, "alice laptop");
    const bob1 = await signIn(input.bob, "bob phone");
    devices.push(alice1, alice2, bob1);
    const alice = alice1.userId;
    const bob = bob1.userId;
    result.devices = { alice1: alice1.deviceId, alice2: alice2.deviceId, bob1: bob1.deviceId };
    // Each device's identity keys, as the server hands them to the others.
    result.aliceDeviceKeysSeenByBob = await waitFor("bob seeing alice's devices", async () => {
        const map = (await bob1.crypto.getUserDeviceInfo([alice], true)).get(alice);
        return map?.size === 2 ? [...map.keys()].sort() : null;
    });

    step("cross-signing");
    await alice1.crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordAuth(alice1, input.alice) });
    result.crossSigningUia = alice1.uia;
    result.aliceIsCrossSigningReady = await alice1.crypto.isCrossSigningReady();

    step("secret storage and key backup");
    const recoveryKey = await alice1.crypto.createRecoveryKeyFromPassphrase();
    recoveryKeys.set(alice, recoveryKey);
    await alice1.crypto.bootstrapSecretStorage({
        createSecretStorageKey: async () => recoveryKey,
        setupNewSecretStorage: true,
        setupNewKeyBackup: true,
    });
    result.crossSigningStatus = await alice1.crypto.getCrossSigningStatus();
    result.secretStorageReady = await alice1.crypto.isSecretStorageReady();
    const backupInfo = await alice1.crypto.getKeyBackupInfo();
    result.backup = { version: backupInfo?.version, algorithm: backupInfo?.algorithm };
    result.backup.activeOnAlice1 = await waitFor("alice's phone enabling the backup", () =>
        alice1.crypto.getActiveSessionBackupVersion(),
    );

    step("cross-sign alice's laptop");
    await waitFor("alice's phone knowing her laptop", () => knowsDevice(alice1, alice, alice2.deviceId));
    await alice1.crypto.crossSignDevice(alice2.deviceId);
    // The laptop learns of the signature through its own /sync device_lists.
    await waitFor(
        "alice's laptop seeing itself cross-signed",
        async () => (await trust(alice2, alice, alice2.deviceId))?.signedByOwner,
    );

    step("encrypted room");
    const { room_id: roomId } = await alice1.client.createRoom({
        name: "Secrets",
        invite: [bob],
        initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    });
    result.roomId = roomId;
    await waitFor("bob's invite", () => bob1.client.getRoom(roomId)?.getMyMembership() === "invite");
    await bob1.client.joinRoom(roomId);
    for (const device of devices) {
        const room = () => device.client.getRoom(roomId);
        await waitFor(`${device.label} seeing bob join`, () => room()?.getMember(bob)?.membership === "join");
        await waitFor(`${device.label} knowing it is encrypted`, () => device.crypto.isEncryptionEnabledInRoom(roomId));
    }

    step("everyone talks");
    const round1 = [];
    for (const device of devices) round1.push(await send(device, roomId, `hello from ${device.label}`));
    result.round1 = round1;
    result.round1Decrypted = {};
    for (const device of devices) result.round1Decrypted[device.label] = await decrypted(device, roomId, round1);

    step("bob's second device");
    const syncTokenBefore = alice1.client.store.getSyncToken();
    const bob2 = await signIn(input.bob, "bob laptop");
    result.devices.bob2 = bob2.deviceId;
    // Through device_lists in /sync, everyone sharing the room learns of it.
    for (const device of devices) {
        await waitFor(`${device.label} learning of bob's laptop`, () => knowsDevice(device, bob, bob2.deviceId));
    }
    // keys/changes between two of alice's sync tokens says the same.
    result.keyChanges = await alice1.client.getKeyChanges(syncTokenBefore, alice1.client.store.getSyncToken());
    devices.push(bob2);
    await waitFor("bob's laptop knowing the room is encrypted", () => bob2.crypto.isEncryptionEnabledInRoom(roomId));
    const round2 = [];
    for (const device of devices) round2.push(await send(device, roomId, `again from ${device.label}`));
    result.round2 = round2;
    result.round2Decrypted = {};
    for (const device of devices) result.round2Decrypted[device.label] = await decrypted(device, roomId, round2);
    // Sent before it existed: the laptop never got those keys.
    result.bob2Round1 = messages(bob2, roomId).filter((m) => round1.includes(m.id));

    step("key backup upload");
    const sessions = [...new Set(messages(alice1, roomId).map((m) => m.sessionId))];
    result.sessionCount = sessions.length;
    const version = result.backup.version;
    result.backedUp = await waitFor("alice's phone backing up every room key", async () => {
        const backup = await alice1.client.http.authedRequest("GET", "/room_keys/keys", { version });
        const stored = backup.rooms?.[roomId]?.sessions ?? {};
        return sessions.every((s) => s in stored) ? Object.keys(stored).length : null;
    }, 500);
    await waitFor("alice's phone finishing the backup", () => !alice1.backupRemaining);

    step("restore on a new device");
    const alice3 = await signIn(input.alice, "alice new laptop", 50);
    devices.push(alice3);
    result.devices.alice3 = alice3.deviceId;
    const old = [...round1, ...round2];
    await waitFor("the new device seeing the old messages", () => {
        const ids = new Set(messages(alice3, roomId).map((m) => m.id));
        return old.every((id) => ids.has(id));
    });
    result.alice3BeforeRestore = messages(alice3, roomId).filter((m) => old.includes(m.id));
    // The recovery key opens secret storage: the cross-signing keys (the new
    // device signs itself, once its keys/query brought the public keys), then
    // the backup key.
    await waitFor("the new device downloading alice's cross-signing keys", async () =>
        (await alice3.crypto.getCrossSigningStatus()).publicKeysOnDevice,
    );
    await alice3.crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordAuth(alice3, input.alice) });
    result.alice3CrossSigningUia = alice3.uia ?? null;
    await alice3.crypto.loadSessionBackupPrivateKeyFromSecretStorage();
    const check = await alice3.crypto.checkKeyBackupAndEnable();
    result.alice3BackupCheck = {
        version: check?.backupInfo?.version,
        trusted: check?.trustInfo?.trusted,
        matchesDecryptionKey: check?.trustInfo?.matchesDecryptionKey,
    };
    result.restored = await alice3.crypto.restoreKeyBackup();
    result.alice3Decrypted = await decrypted(alice3, roomId, old);

    step("trust");
    const aliceDevices = { alice1: alice1.deviceId, alice2: alice2.deviceId, alice3: alice3.deviceId };
    // bob's phone learns of the new device's signature through device_lists.
    await waitFor(
        "bob seeing alice's new device cross-signed",
        async () => (await trust(bob1, alice, alice3.deviceId))?.signedByOwner,
    );
    result.trust = {};
    for (const viewer of [alice1, alice2, alice3, bob1]) {
        const view = {};
        for (const [name, deviceId] of Object.entries(aliceDevices)) view[name] = await trust(viewer, alice, deviceId);
        view.aliceHasCrossSigningKeys = await viewer.crypto.userHasCrossSigningKeys(alice, true);
        view.aliceIdentityVerified = (await viewer.crypto.getUserVerificationStatus(alice)).isCrossSigningVerified();
        result.trust[viewer.label] = view;
    }
    result.alice3CrossSigningStatus = await alice3.crypto.getCrossSigningStatus();

    step("bob verifies alice");
    // Interactive SAS verification between bob's phone and alice's phone,
    // every message a to-device event; then bob's user-signing key signs
    // alice's master key (keys/signatures/upload for another user).
    await bob1.crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordAuth(bob1, input.bob) });
    result.bobCrossSigningUia = bob1.uia;
    let aliceRequest = null;
    alice1.client.on(CryptoEvent.VerificationRequestReceived, (request) => (aliceRequest = request));
    const bobRequest = await bob1.crypto.requestDeviceVerification(alice, alice1.deviceId);
    await waitFor("alice's phone receiving the verification request", () => aliceRequest);
    await aliceRequest.accept();
    await waitFor("bob's phone seeing the request accepted", () => bobRequest.phase === VerificationPhase.Ready);
    const sas = {};
    const confirmSas = (who) => async (callbacks) => {
        sas[who] = callbacks.sas.emoji.map(([, name]) => name);
        await callbacks.confirm();
    };
    const bobVerifier = await bobRequest.startVerification("m.sas.v1");
    bobVerifier.on(VerifierEvent.ShowSas, confirmSas("bob"));
    const aliceVerifier = await waitFor("alice's phone starting SAS", () => aliceRequest.verifier);
    aliceVerifier.on(VerifierEvent.ShowSas, confirmSas("alice"));
    await Promise.all([bobVerifier.verify(), aliceVerifier.verify()]);
    result.sas = sas;
    result.verificationPhases = { bob: bobRequest.phase, alice: aliceRequest.phase, done: VerificationPhase.Done };
    result.bobTrustsAlice = await waitFor("bob trusting alice's identity", async () =>
        (await bob1.crypto.getUserVerificationStatus(alice)).isCrossSigningVerified(),
    );
    result.bobTrustAfter = {};
    for (const [name, deviceId] of Object.entries(aliceDevices)) {
        result.bobTrustAfter[name] = await trust(bob1, alice, deviceId);
    }

    // The raw keys/query answers, for the test to check who sees which signatures.
    const query = (device, user) =>
        device.client.http.authedRequest("POST", "/keys/query", undefined, { device_keys: { [user]: [] } });
    result.queries = {
        aliceByAlice: await query(alice1, alice),
        bobByAlice: await query(alice1, bob),
        aliceByBob: await query(bob1, alice),
        bobByBob: await query(bob1, bob),
    };

    step("key counts");
    // What /sync tells each device about its one-time and fallback keys.
    result.keyCounts = {};
    for (const device of devices) result.keyCounts[device.label] = await rawSync(device);

    step("fallback key");
    // alice's laptop stops hearing from its sync; bob claims every one-time
    // key it has, then its fallback key, which stays on offer until replaced.
    hold(alice2.label);
    const claimKey = async () => {
        const { one_time_keys: keys } = await bob1.client.http.authedRequest("POST", "/keys/claim", undefined, {
            one_time_keys: { [alice]: { [alice2.deviceId]: "signed_curve25519" } },
        });
        const [[keyId, key]] = Object.entries(keys?.[alice]?.[alice2.deviceId] ?? { none: {} });
        return { keyId, fallback: key.fallback === true, key: key.key };
    };
    const claims = [];
    while (claims.length < 60 && !claims.at(-1)?.fallback) claims.push(await claimKey());
    claims.push(await claimKey());
    result.fallback = {
        claims: claims.map(({ keyId, fallback }) => ({ keyId, fallback })),
        sameFallbackKey: claims.at(-1).key === claims.at(-2).key,
    };
    result.fallback.laptopHeld = await rawSync(alice2);
    // Its sync resumes (bob's message wakes it): it sees its one-time keys
    // were used up and uploads new ones (Rust crypto replaces a used fallback
    // key only once it expires), and it still reads bob.
    letGo(alice2.label);
    const wake = await send(bob1, roomId, "are you back?");
    result.fallback.wakeDecrypted = await decrypted(alice2, roomId, [wake]);
    result.fallback.laptopReplenished = await waitFor("alice's laptop replacing its keys", async () => {
        const counts = await rawSync(alice2);
        return counts.oneTimeKeys?.signed_curve25519 > 0 ? counts : null;
    }, 200);

    step("bob resets cross-signing");
    // Replacing existing cross-signing keys takes the password (UIA).
    bob1.uia = undefined;
    const oldMaster = await bob1.crypto.getCrossSigningKeyId();
    await bob1.crypto.bootstrapCrossSigning({
        setupNewCrossSigning: true,
        authUploadDeviceSigningKeys: passwordAuth(bob1, input.bob),
    });
    result.bobReset = { uia: bob1.uia, replaced: (await bob1.crypto.getCrossSigningKeyId()) !== oldMaster };
    // alice's phone sees bob's new identity, which she has never verified.
    result.bobReset.aliceSeesNewKey = await waitFor("alice seeing bob's new master key", async () => {
        const keys = await query(alice1, bob);
        const master = Object.values(keys.master_keys?.[bob]?.keys ?? {})[0];
        // Her client's own view follows the server's device-list change; until
        // it has, it still judges bob by the identity she verified.
        const status = await alice1.crypto.getUserVerificationStatus(bob);
        if (!master || master === oldMaster || status.isCrossSigningVerified()) return null;
        return { master: true, verified: status.isCrossSigningVerified(), wasVerified: status.wasCrossSigningVerified() };
    }, 200);
    result.step = "done";
} catch (err) {
    result.error = `${err?.name}: ${err?.message}`;
    result.stack = err?.stack;
    result.errorData = err?.data;
}

const started = result.timings["sign in"];
for (const name of Object.keys(result.timings)) result.timings[name] -= started;
result.timings.total = Date.now() - started;
for (const device of devices) device.client.stopClient();
process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
process.exit(0);
