// A frontend that installed the packed @headcast/web: the type-check (make test) runs tsc on it.
import {
  HeadcastError,
  connect,
  createAvatar,
  createSession,
  deleteAvatar,
  listAvatars,
  waitAvatar,
  type Avatar,
  type HeadcastEventMap,
  type Session,
} from "@headcast/web";
import type { HeadcastAvatar } from "@headcast/web/widget";

export async function talk(video: HTMLVideoElement, tts: ReadableStream<Uint8Array>): Promise<number> {
  const session: Session = await createSession("https://avatar.example.com", {
    audioSource: "push",
    sampleRate: 24000,
  });
  const ended = new Promise<HeadcastEventMap["speech.ended"]>((resolve) => {
    const off = session.on("speech.ended", (event) => {
      off();
      resolve(event);
    });
  });
  session.addEventListener("chunk.stats", (event) => {
    const queued: number = event.data.queued_ms;
    const rtf: number | null = event.data.rtf;
    console.log(queued, rtf);
  });
  try {
    const { videoStream } = await connect(session);
    video.srcObject = videoStream;
    const sent: boolean = await session.speakStream(tts);
    if (sent) await session.audioEnd();
    await session.speak(new Float32Array(2400));
    const { played_ms } = await session.interrupt();
    return played_ms + (await ended).duration_ms;
  } catch (err) {
    if (err instanceof HeadcastError && err.code === "capacity") return err.retryAfterS ?? 0;
    throw err;
  } finally {
    await session.close();
  }
}

export function widget(): void {
  const avatar: HeadcastAvatar | null = document.querySelector("headcast-avatar");
  avatar?.on("interrupted", ({ played_ms }) => console.log(played_ms));
  avatar?.addEventListener("headcast-error", (event) => console.log(event.detail.message));
  void avatar?.speak(new Int16Array(1600));
}

export async function addFace(photo: File): Promise<Session | string> {
  const added: Avatar = await createAvatar("https://avatar.example.com", photo, { name: "me" });
  const avatar = await waitAvatar("https://avatar.example.com", added.id, {
    onProgress: ({ status, progress }) => console.log(status, progress),
  });
  if (avatar.status === "failed") return avatar.message ?? avatar.error ?? "failed";
  const ready: Avatar[] = (await listAvatars("https://avatar.example.com")).filter(
    (each) => each.status === "ready",
  );
  console.log(ready.map((each) => each.preview_url));
  const session = await createSession("https://avatar.example.com", { avatar: avatar.id });
  await session.close();
  await deleteAvatar("https://avatar.example.com", avatar.id);
  return session;
}
