// Simplified Sliding Sync (MSC4186) end to end, driven by matrix-js-sdk's own
// sliding sync client: `SlidingSync` (lib/sliding-sync.js) sends the
// requests to /_matrix/client/unstable/org.matrix.simplified_msc3575/sync and
// `SlidingSyncSdk` (lib/sliding-sync-sdk.js, which startClient({slidingSync})
// installs) turns the answers into Room objects and runs the to_device, e2ee,
// account_data, typing and receipts extensions.
//
// bob signs in (with Rust crypto, so that the e2ee extension is on) and
// starts with a list window of the two most recent rooms; then he subscribes
// to an older room, widens the window to every room and adds filtered lists
// (is_dm, is_encrypted, tags). While his loop runs, alice (a js-sdk client on
// the access token the test made for her, without a sync loop of its own)
// sends a message, invites him to a new room, types, sets a read receipt and
// sends him to-device messages; bob sets account data and a room tag; finally
// alice signs in on a laptop (Rust crypto and a sliding sync loop of its
// own): bob learns of the new device through the e2ee extension's device
// lists and sends an encrypted message, which the laptop decrypts with the
// room key that reached it through its to_device extension.
//
// Input: one JSON argument {baseUrl, password, bob, alice: {user, userId,
// accessToken, deviceId}, rooms: {label: roomId}, timelineLimit, firstWindow,
// pollTimeoutMs, timeoutMs, dumpPath?}. Output: one line on stdout, "RESULT <json>", for
// tests/e2e/test_jssdk_sliding_sync.py to check; the SDK's own logging goes to
// stderr. On failure the RESULT carries `error` and the step it failed in.

import { writeFileSync } from "node:fs";

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";
import { SlidingSync, SlidingSyncEvent, SlidingSyncState } from "matrix-js-sdk/lib/sliding-sync.js";

const input = JSON.parse(process.argv[2]);
logger.setLevel("warn");
// Keep stdout for the result alone.
console.log = console.info = console.debug = (...args) => console.error(...args);

const SLIDING_SYNC_PATH = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
const deadline = Date.now() + input.timeoutMs;
const rooms = input.rooms;
const result = { step: null, steps: {}, httpErrors: [], requests: {} };
// Every sliding sync request and its answer, per device: {pos, timeout, body, status, response, ...}.
const exchanges = { bob: [], laptop: [] };
// The users each device's answered /keys/query requests asked about.
const keyQueries = {};

function step(name) {
    result.step = name;
    result.steps[name] = { started: Date.now() };
    console.error(`=== ${name}`);
}

/** Poll `check` (which may be async) until it returns something truthy. */
async function waitFor(what, check, intervalMs = 20) {
    for (;;) {
        const value = await check();
        if (value) return value;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
}

/** Milliseconds since `since`. */
const elapsed = (since) => Date.now() - since;

/** fetch that records every sliding sync exchange and every refused request. */
function recordingFetch(label) {
    return async (url, init) => {
        const parsed = new URL(url);
        const method = init?.method ?? "GET";
        const endpoint = `${method} ${parsed.pathname.replace(/^\/_matrix\/client\/v3/, "")}`;
        const counts = (result.requests[label] ??= {});
        counts[endpoint] = (counts[endpoint] ?? 0) + 1;
        let exchange = null;
        if (parsed.pathname === SLIDING_SYNC_PATH) {
            exchange = {
                pos: parsed.searchParams.get("pos"),
                timeout: parsed.searchParams.get("timeout"),
                body: typeof init?.body === "string" ? JSON.parse(init.body) : null,
                started: Date.now(),
            };
            exchanges[label].push(exchange);
        }
        let response;
        try {
            response = await fetch(url, init);
        } catch (err) {
            if (exchange) exchange.failed = String(err.name ?? err);
            throw err;
        }
        if (endpoint === "POST /keys/query" && response.status === 200) {
            const users = Object.keys(JSON.parse(init.body).device_keys ?? {});
            (keyQueries[label] ??= []).push({ users, at: Date.now() });
        }
        if (exchange) {
            exchange.status = response.status;
            exchange.ms = Date.now() - exchange.started;
            try {
                exchange.response = await response.clone().json();
            } catch (err) {
                exchange.failed = String(err.name ?? err);
            }
        }
        if (response.status >= 400) {
            result.httpErrors.push({
                device: label,
                method,
                path: parsed.pathname,
                status: response.status,
                body: (await response.clone().text()).slice(0, 500),
            });
        }
        return response;
    };
}

/**
 * The answered exchanges the SDK went on from: not those it dropped (a later
 * request went out again from the same pos, as after an abort mid-answer).
 */
function processed(label) {
    const list = exchanges[label];
    return list.filter(
        (e, i) => e.status === 200 && e.response && !list.slice(i + 1).some((later) => later.pos === e.pos),
    );
}

/** A short account of the exchanges, for the test's failure messages. */
function summary(label) {
    return exchanges[label].map((e, i) => ({
        i,
        pos: e.pos,
        timeout: e.timeout,
        lists: Object.fromEntries(
            Object.entries(e.body?.lists ?? {}).map(([k, v]) => [k, { ranges: v.ranges, filters: v.filters }]),
        ),
        subscribe: Object.keys(e.body?.room_subscriptions ?? {}),
        extensions: Object.keys(e.body?.extensions ?? {}),
        status: e.status,
        failed: e.failed,
        // Still waiting for its answer when the script ended.
        pending: e.status === undefined && e.failed === undefined,
        ms: e.ms,
        newPos: e.response?.pos,
        counts: Object.fromEntries(Object.entries(e.response?.lists ?? {}).map(([k, v]) => [k, v.count])),
        rooms: Object.keys(e.response?.rooms ?? {}),
        responseExtensions: Object.keys(e.response?.extensions ?? {}),
        error: e.status === 200 ? undefined : e.response,
    }));
}

/** What the server first said about a room, in a processed answer. */
function firstSeen(label, roomId) {
    const all = processed(label);
    const index = all.findIndex((e) => e.response.rooms?.[roomId]);
    if (index < 0) return null;
    const data = all[index].response.rooms[roomId];
    return {
        exchange: exchanges[label].indexOf(all[index]),
        initial: data.initial,
        name: data.name,
        heroes: data.heroes,
        is_dm: data.is_dm,
        lists: data.lists,
        membership: data.membership,
        limited: data.limited,
        num_live: data.num_live,
        prev_batch: typeof data.prev_batch === "string",
        bump_stamp: data.bump_stamp,
        joined_count: data.joined_count,
        invited_count: data.invited_count,
        timeline: (data.timeline ?? []).map((e) => e.event_id),
        required_state: (data.required_state ?? []).map((e) => [e.type, e.state_key]),
        invite_state: (data.invite_state ?? []).map((e) => [e.type, e.state_key]),
    };
}

/** Bob's Room, as the SDK built it. */
function roomView(client, roomId) {
    const room = client.getRoom(roomId);
    if (!room) return null;
    const me = client.getUserId();
    const timeline = room.getLiveTimeline();
    const events = timeline.getEvents();
    const state = room.currentState;
    return {
        name: room.name,
        membership: room.getMyMembership(),
        timeline: events.map((e) => e.getId()),
        messages: events.filter((e) => e.getType() === "m.room.message").map((e) => e.getContent().body),
        paginationToken: timeline.getPaginationToken(sdk.EventTimeline.BACKWARDS),
        bumpStamp: room.getBumpStamp() ?? null,
        joinedCount: room.getJoinedMemberCount(),
        invitedCount: room.getInvitedMemberCount(),
        heroes: (room.heroes ?? []).map((h) => ({ userId: h.userId, displayName: h.displayName })),
        state: {
            create: state.getStateEvents("m.room.create", "") !== null,
            joinRules: state.getStateEvents("m.room.join_rules", "") !== null,
            encryption: state.getStateEvents("m.room.encryption", "") !== null,
            myMembership: state.getStateEvents("m.room.member", me)?.getContent().membership ?? null,
            members: state
                .getStateEvents("m.room.member")
                .map((e) => e.getStateKey())
                .sort(),
        },
    };
}

async function login(user, label) {
    const anonymous = sdk.createClient({ baseUrl: input.baseUrl, fetchFn: recordingFetch(label) });
    return anonymous.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user },
        password: input.password,
        initial_device_display_name: label,
    });
}

const REQUIRED_STATE = [
    ["m.room.create", ""],
    ["m.room.name", ""],
    ["m.room.avatar", ""],
    ["m.room.encryption", ""],
    ["m.room.member", "$ME"],
    ["m.room.member", "$LAZY"],
];

/** A js-sdk client with Rust crypto, syncing through its own SlidingSync. */
async function startSlidingClient(label, loginResponse, lists, subscription) {
    const client = sdk.createClient({
        baseUrl: input.baseUrl,
        accessToken: loginResponse.access_token,
        userId: loginResponse.user_id,
        deviceId: loginResponse.device_id,
        fetchFn: recordingFetch(label),
    });
    await client.initRustCrypto({ useIndexedDB: false });
    const slidingSync = new SlidingSync(input.baseUrl, lists, subscription, client, input.pollTimeoutMs);
    const device = {
        label,
        client,
        slidingSync,
        crypto: client.getCrypto(),
        userId: loginResponse.user_id,
        deviceId: loginResponse.device_id,
        syncStates: [],
        completed: 0,
        live: [],
        toDevice: [],
        receivedToDevice: [],
        accountData: [],
        typing: [],
    };
    slidingSync.on(SlidingSyncEvent.Lifecycle, (state, resp, err) => {
        if (state === SlidingSyncState.Complete && resp) device.completed += 1;
        if (err) console.error(`${label}: sliding sync error`, err);
    });
    client.on(sdk.ClientEvent.Sync, (state) => device.syncStates.push(state));
    client.on(sdk.RoomEvent.Timeline, (event, room, toStartOfTimeline, removed, data) => {
        if (toStartOfTimeline || removed || !data?.liveEvent) return;
        device.live.push({
            room: room?.roomId,
            id: event.getId(),
            type: event.getType(),
            sender: event.getSender(),
            body: event.getContent()?.body,
            at: Date.now(),
        });
    });
    client.on(sdk.ClientEvent.ToDeviceEvent, (event) => {
        device.toDevice.push({ type: event.getType(), sender: event.getSender(), content: event.getContent(), at: Date.now() });
    });
    client.on(sdk.ClientEvent.ReceivedToDeviceMessage, ({ message, encryptionInfo }) => {
        device.receivedToDevice.push({ type: message.type, sender: message.sender, encrypted: encryptionInfo !== null });
    });
    client.on(sdk.ClientEvent.AccountData, (event) => {
        device.accountData.push({ type: event.getType(), content: event.getContent(), at: Date.now() });
    });
    client.on(sdk.ClientEvent.Event, (event) => {
        if (event.getType() === "m.typing") {
            device.typing.push({ room: event.getRoomId(), userIds: event.getContent().user_ids ?? [], at: Date.now() });
        }
    });
    await client.startClient({ slidingSync });
    return device;
}

/** Resolve with `promise`, or reject at the deadline. */
function beforeDeadline(what, promise) {
    return Promise.race([
        promise,
        new Promise((_, reject) =>
            setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), Math.max(0, deadline - Date.now())).unref(),
        ),
    ]);
}

let bob = null;
let laptop = null;
try {
    // alice: a js-sdk client on the test's access token, without a sync loop.
    const alice = sdk.createClient({
        baseUrl: input.baseUrl,
        accessToken: input.alice.accessToken,
        userId: input.alice.userId,
        deviceId: input.alice.deviceId,
        fetchFn: recordingFetch("alice"),
    });

    step("bob starts sliding sync");
    const bobLogin = await login(input.bob, "bob");
    bob = await startSlidingClient(
        "bob",
        bobLogin,
        new Map([
            [
                "all",
                { ranges: [[0, input.firstWindow - 1]], required_state: REQUIRED_STATE, timeline_limit: input.timelineLimit, filters: {} },
            ],
        ]),
        { timeline_limit: input.timelineLimit, required_state: [["*", "*"]] },
    );
    result.bob = { userId: bob.userId, deviceId: bob.deviceId };
    const ss = bob.slidingSync;

    // The first window: the `firstWindow` most recent rooms, and the list's count.
    step("first window");
    await waitFor("bob's first sliding sync answer", () => bob.completed >= 1);
    const first = processed("bob")[0] ?? exchanges.bob.find((e) => e.status === 200);
    result.firstWindow = {
        exchange: exchanges.bob.indexOf(first),
        rawRooms: Object.keys(first?.response?.rooms ?? {}),
        rawCount: first?.response?.lists?.all?.count ?? null,
        count: ss.getListData("all")?.joinedCount ?? null,
        clientRooms: bob.client.getRooms().map((r) => r.roomId),
        syncStates: [...bob.syncStates],
    };

    // A room subscription brings in an older room, outside the window.
    step("room subscription");
    ss.modifyRoomSubscriptions(new Set([rooms.history]));
    await waitFor("the subscribed room", () => (bob.client.getRoom(rooms.history)?.getLiveTimeline().getEvents().length ?? 0) > 0);
    result.subscription = {
        view: roomView(bob.client, rooms.history),
        raw: firstSeen("bob", rooms.history),
        clientRooms: bob.client.getRooms().map((r) => r.roomId),
    };

    // Widening the window to every room brings in the rest.
    step("widen the window");
    ss.setListRanges("all", [[0, 19]]);
    await waitFor("every room", () => Object.values(rooms).every((id) => bob.client.getRoom(id)));
    result.widened = {
        views: Object.fromEntries(Object.entries(rooms).map(([label, id]) => [label, roomView(bob.client, id)])),
        raw: Object.fromEntries(Object.entries(rooms).map(([label, id]) => [label, firstSeen("bob", id)])),
        count: ss.getListData("all")?.joinedCount ?? null,
    };

    // Scrolling back from the timeline's prev_batch (through /messages).
    step("scroll back");
    const history = bob.client.getRoom(rooms.history);
    while (history.getLiveTimeline().getPaginationToken(sdk.EventTimeline.BACKWARDS) !== null) {
        const before = history.getLiveTimeline().getEvents().length;
        await bob.client.scrollback(history, 5);
        if (history.getLiveTimeline().getEvents().length === before) break;
    }
    result.scrollback = history
        .getLiveTimeline()
        .getEvents()
        .filter((e) => e.getType() === "m.room.message")
        .map((e) => e.getContent().body);

    // Filtered lists, added to the running connection.
    step("filtered lists");
    const filtered = {
        dms: { is_dm: true },
        groups: { is_dm: false },
        encrypted: { is_encrypted: true },
        unencrypted: { is_encrypted: false },
    };
    for (const [name, filters] of Object.entries(filtered)) {
        ss.setList(name, { ranges: [[0, 19]], required_state: [["m.room.create", ""]], timeline_limit: 1, filters });
    }
    // An answer with the lists' counts, fully taken in by the SDK (it has sent the next request from it).
    const answered = (names) =>
        processed("bob").find(
            (e) =>
                names.every((n) => e.body?.lists?.[n] && e.response.lists?.[n]) &&
                exchanges.bob.some((later) => later.pos === e.response.pos),
        );
    await waitFor("the filtered lists' counts", () => answered(Object.keys(filtered)));
    result.filteredLists = Object.fromEntries(Object.keys(filtered).map((n) => [n, ss.getListData(n)?.joinedCount ?? null]));

    // Live: alice's message reaches bob's running loop.
    step("live message");
    let started = Date.now();
    const { event_id: liveId } = await alice.sendTextMessage(rooms.alpha, "live message");
    await waitFor("bob receiving the live message", () => bob.live.some((e) => e.id === liveId));
    result.live = {
        id: liveId,
        ms: elapsed(started),
        received: bob.live.filter((e) => e.id === liveId),
        bumpStamps: Object.fromEntries(
            Object.entries(rooms).map(([label, id]) => [label, bob.client.getRoom(id)?.getBumpStamp() ?? null]),
        ),
        messages: roomView(bob.client, rooms.alpha).messages,
    };

    // An invite: the room and its name come from invite_state; bob joins and then sees messages.
    step("invite");
    started = Date.now();
    const { room_id: invited } = await alice.createRoom({ name: "Invitation", invite: [bob.userId] });
    await waitFor("bob's invite", () => bob.client.getRoom(invited)?.getMyMembership() === "invite");
    const inviteRoom = bob.client.getRoom(invited);
    result.invite = {
        roomId: invited,
        ms: elapsed(started),
        name: inviteRoom.name,
        membership: inviteRoom.getMyMembership(),
        inviter: inviteRoom.getMember(bob.userId)?.events.member?.getSender() ?? null,
        raw: firstSeen("bob", invited),
    };
    step("join");
    await bob.client.joinRoom(invited);
    await waitFor("bob's join coming down sync", () => bob.client.getRoom(invited)?.getMyMembership() === "join");
    started = Date.now();
    const { event_id: welcomeId } = await alice.sendTextMessage(invited, "welcome");
    await waitFor("bob receiving the welcome", () => bob.live.some((e) => e.id === welcomeId));
    result.invite.welcomeMs = elapsed(started);
    result.invite.welcomeId = welcomeId;
    result.invite.joined = roomView(bob.client, invited);

    // Typing notifications through the typing extension.
    step("typing");
    started = Date.now();
    await alice.sendTyping(rooms.alpha, true, 30000);
    const aliceTyping = () => bob.client.getRoom(rooms.alpha)?.getMember(input.alice.userId)?.typing;
    await waitFor("alice typing, as bob sees it", () => aliceTyping() === true);
    result.typing = { onMs: elapsed(started) };
    started = Date.now();
    await alice.sendTyping(rooms.alpha, false);
    await waitFor("alice no longer typing, as bob sees it", () => aliceTyping() === false);
    result.typing.offMs = elapsed(started);
    result.typing.events = bob.typing.filter((t) => t.room === rooms.alpha).map((t) => t.userIds);

    // A read receipt through the receipts extension, on an event of bob's (so no receipt js-sdk makes up).
    step("receipt");
    const { event_id: bobMessage } = await bob.client.sendTextMessage(rooms.alpha, "bob was here");
    await waitFor("bob's message coming down sync", () =>
        bob.client.getRoom(rooms.alpha)?.getLiveTimeline().getEvents().some((e) => e.getId() === bobMessage),
    );
    started = Date.now();
    await alice.sendReceipt(
        new sdk.MatrixEvent({ event_id: bobMessage, room_id: rooms.alpha, type: "m.room.message", sender: bob.userId }),
        "m.read",
        {},
        true,
    );
    await waitFor("alice's receipt, as bob sees it", () =>
        bob.client.getRoom(rooms.alpha)?.getEventReadUpTo(input.alice.userId, true) === bobMessage,
    );
    const alphaRoom = bob.client.getRoom(rooms.alpha);
    result.receipt = {
        eventId: bobMessage,
        ms: elapsed(started),
        readUpTo: alphaRoom.getEventReadUpTo(input.alice.userId, true),
        receipts: alphaRoom
            .getReceiptsForEvent(alphaRoom.findEventById(bobMessage))
            .map((r) => ({ userId: r.userId, type: r.type })),
    };

    // To-device messages through the to_device extension.
    step("to-device");
    started = Date.now();
    const nonces = ["first ping", "second ping"];
    for (const nonce of nonces) {
        await alice.sendToDevice(
            "org.example.sliding_ping",
            new Map([[bob.userId, new Map([[bob.deviceId, { nonce }]])]]),
        );
    }
    const pings = () => bob.toDevice.filter((m) => m.type === "org.example.sliding_ping");
    await waitFor("bob's to-device messages", () => pings().length >= nonces.length);
    result.toDevice = { sent: nonces, ms: elapsed(started) };

    // Account data through the account_data extension: global, then a room tag.
    step("account data");
    started = Date.now();
    const setting = { value: `set at ${Date.now()}` };
    await beforeDeadline("setAccountData's echo", bob.client.setAccountData("org.example.sliding_setting", setting));
    await waitFor("the account data echo", () =>
        bob.accountData.some((e) => e.type === "org.example.sliding_setting" && e.content.value === setting.value),
    );
    result.accountData = {
        sent: setting,
        ms: elapsed(started),
        stored: bob.client.getAccountData("org.example.sliding_setting")?.getContent() ?? null,
    };
    started = Date.now();
    await bob.client.setRoomTag(rooms.beta, "m.favourite", { order: 0.5 });
    await waitFor("the room tag echo", () => bob.client.getRoom(rooms.beta)?.tags?.["m.favourite"]);
    result.accountData.tagMs = elapsed(started);
    result.accountData.tags = bob.client.getRoom(rooms.beta).tags;
    ss.setList("favourites", { ranges: [[0, 19]], required_state: [], timeline_limit: 1, filters: { tags: ["m.favourite"] } });
    ss.setList("others", { ranges: [[0, 19]], required_state: [], timeline_limit: 1, filters: { not_tags: ["m.favourite"] } });
    await waitFor("the tag lists' counts", () => answered(["favourites", "others"]));
    result.tagLists = { favourites: ss.getListData("favourites")?.joinedCount, others: ss.getListData("others")?.joinedCount };

    // E2EE: bob sends in the encrypted room, which makes his crypto track (and query) alice's devices.
    step("bob encrypts");
    const { event_id: firstSecret } = await bob.client.sendTextMessage(rooms.secret, "nobody else to read this");
    const aliceDevices = async () => [...((await bob.crypto.getUserDeviceInfo([input.alice.userId])).get(input.alice.userId)?.keys() ?? [])];
    const bobQueriedAlice = () => (keyQueries.bob ?? []).filter((q) => q.users.includes(input.alice.userId)).length;
    // Before the laptop exists, bob's crypto has asked for alice's keys: it knows them up to date from then on.
    await waitFor("bob's crypto querying alice's keys", bobQueriedAlice);
    result.e2ee = { firstSecret, aliceDevicesBefore: await aliceDevices(), queriesBefore: bobQueriedAlice() };

    // alice signs in on a laptop, with its own sliding sync: its crypto uploads keys after its first answer.
    step("laptop signs in");
    const laptopLogin = await login(input.alice.user, "laptop");
    laptop = await startSlidingClient(
        "laptop",
        laptopLogin,
        new Map([["all", { ranges: [[0, 19]], required_state: REQUIRED_STATE, timeline_limit: 1, filters: {} }]]),
        { timeline_limit: 1, required_state: [] },
    );
    result.e2ee.laptopDeviceId = laptop.deviceId;
    await waitFor("the laptop's first answer", () => laptop.completed >= 1);

    // bob learns of it through device_lists in his e2ee extension, and queries its keys.
    step("bob learns of the laptop");
    started = Date.now();
    await waitFor("bob seeing alice's laptop", async () => (await aliceDevices()).includes(laptop.deviceId), 100);
    result.e2ee.seenMs = elapsed(started);
    result.e2ee.aliceDevicesAfter = await aliceDevices();
    result.e2ee.queriesAfter = bobQueriedAlice();
    // What bob's e2ee extension said about changed device lists.
    result.e2ee.deviceListsChanged = processed("bob").flatMap((e) => e.response.extensions?.e2ee?.device_lists?.changed ?? []);

    // bob's next encrypted message: the room key goes to the laptop as an olm to-device message.
    step("laptop decrypts");
    started = Date.now();
    const { event_id: secretId } = await bob.client.sendTextMessage(rooms.secret, "for the laptop");
    const decryptedBody = async () => {
        const event = laptop.client.getRoom(rooms.secret)?.findEventById(secretId);
        if (!event) return null;
        await laptop.client.decryptEventIfNeeded(event);
        return event.isDecryptionFailure() ? null : (event.getClearContent()?.body ?? null);
    };
    result.e2ee.secretId = secretId;
    result.e2ee.decrypted = await waitFor("the laptop decrypting bob's message", decryptedBody, 100);
    result.e2ee.decryptMs = elapsed(started);
    result.e2ee.laptopToDevice = laptop.receivedToDevice;
    result.e2ee.laptopWireType = laptop.client.getRoom(rooms.secret).findEventById(secretId).getWireType();

    step("done");
    result.finalCount = ss.getListData("all")?.joinedCount ?? null;
    result.finalRooms = bob.client.getRooms().map((r) => r.roomId);
} catch (err) {
    result.error = String(err?.stack ?? err);
} finally {
    if (bob) {
        result.toDeviceReceived = bob.toDevice
            .filter((m) => m.type === "org.example.sliding_ping")
            .map((m) => ({ sender: m.sender, nonce: m.content.nonce }));
        result.syncStates = { bob: [...new Set(bob.syncStates)], laptop: laptop ? [...new Set(laptop.syncStates)] : [] };
        result.liveIds = bob.live.map((e) => e.id);
    }
    result.exchanges = { bob: summary("bob"), laptop: summary("laptop") };
    // Every request and answer in full, for reading after a failure.
    if (input.dumpPath) writeFileSync(input.dumpPath, JSON.stringify(exchanges, null, 1));
    bob?.client.stopClient();
    laptop?.client.stopClient();
    process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
    process.exit(0);
}
